"""Counting the tensors an op sequence allocates, for the inference-memory tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class NewStorages(TorchDispatchMode):
    """Counts (``count``) the op outputs that own a new storage (none of the op's tensor
    inputs') and pass ``keep``, while the mode is active."""

    def __init__(self, keep: Callable[[torch.Tensor], bool]) -> None:
        super().__init__()
        self.keep, self.count = keep, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        if isinstance(out, torch.Tensor) and self.keep(out):
            if all(out.untyped_storage().data_ptr() != a.untyped_storage().data_ptr() for a in inputs):
                self.count += 1
        return out
