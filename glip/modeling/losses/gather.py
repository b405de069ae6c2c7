"""Cross-process gathers for batch-global losses; plain identities in one process.

``gather_with_grad`` concatenates every process's tensor along dim 0, in rank order, with
this process's own tensor put back in its slot so that autograd reaches it. Its
backward sums the gathered gradient over processes (``all_reduce``) before taking the
local slice, so that with DistributedDataParallel (which averages parameter gradients)
a loss over the global batch gets exactly the gradient one process would get. With
``sum_grads=False`` each process keeps only the gradient of its own loss terms, as the
official ``gather_tensors`` of ``utils/shallow_contrastive_loss_helper.py`` does
(terms of other processes' losses that depend on this process's features are lost).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather", "all_reduce", "gather_with_grad", "rank", "world_size"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather(tensor: Tensor) -> Tensor:
    """``Tensor[W * n, ...]``: every process's ``Tensor[n, ...]`` in rank order, no gradient.

    Every process must pass the same shape."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce(tensor: Tensor, op: Any = None) -> Tensor:
    """A reduced copy over processes (``op`` defaults to SUM); the tensor itself in one process."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op is None else op)
    return out


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, sum_grads: bool) -> Tensor:
        ctx.sum_grads = sum_grads
        ctx.local = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        parts[rank()] = tensor  # the same values; autograd only needs the slot
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        if ctx.sum_grads:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.local
        return grad[start : start + ctx.local], None


def gather_with_grad(tensor: Tensor, sum_grads: bool = True) -> Tensor:
    """``Tensor[W * n, ...]``: every process's ``Tensor[n, ...]`` in rank order, differentiable
    with respect to the local slice (see the module docstring). Every process must pass
    the same shape and call the backward."""
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, sum_grads)
