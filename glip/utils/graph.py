"""Whether an op may work in place at inference: the rule the memory-saving paths share."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["needs_graph", "tracing"]


def tracing() -> bool:
    """Whether a tracer (TorchScript, ONNX export) records the ops: it must see the plain,
    out-of-place graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def needs_graph(*tensors: Tensor | None) -> bool:
    """Whether ops on ``tensors`` must stay out of place: while tracing, or when autograd
    records them (gradients enabled and one of them requires grad)."""
    return tracing() or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
