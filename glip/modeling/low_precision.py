"""Reduced-precision inference, two opt-in modes: weight storage in bfloat16 with float32
compute (:func:`store_weights`), and mixed-precision compute with float32 weights
(:func:`autocast`, ``torch.autocast`` around the network; the heads' outputs are decoded in
float32).

:func:`store_weights` keeps every floating-point parameter of a model in a narrower dtype
(``torch.bfloat16``: half the memory of float32) and gives each *unit* float32 copies of its
parameters only while its ``forward`` runs: a forward pre-hook upcasts them, a forward hook
(called even when the forward raises) puts the stored tensors back. A unit is the largest
module whose parameters, its children's included, take at most 32 MiB in float32 (a Swin or
BERT layer, a fusion block), or the own parameters of a bigger module. Activations, buffers
(anchors, BERT position ids) and every op stay float32, so the only change to the results
is the rounding of the weights to the storage dtype, and the extra memory at any time is
the float32 copy of the units that are running (at most a few tens of MiB). A large
``nn.Embedding`` (BERT's word table) looks its rows up in the stored table and upcasts only
those rows (the same values as upcasting the whole table first).

The default path never calls this: a model loaded without ``weights_dtype`` is untouched.
The hooks swap tensors on the module, so one model must not run forwards in several threads
at once in this mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "AUTOCAST_DTYPES",
    "WEIGHTS_DTYPES",
    "autocast",
    "build_in_dtype",
    "parse_autocast_dtype",
    "parse_weights_dtype",
    "store_weights",
    "stored_weights_dtype",
]

M = TypeVar("M", bound=nn.Module)

# Accepted spellings of the storage dtype -> the dtype. float32 is the default path (no-op).
WEIGHTS_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_COMPUTE_DTYPE = torch.float32
_STORED = "_glip_stored_weights"  # attribute on a module: its stored parameters during a forward
_MARK = "_glip_weights_dtype"  # attribute on the root module: the storage dtype


def parse_weights_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``"bf16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; ``None``,
    ``"float32"`` / ``"fp32"`` / ``torch.float32`` -> ``None`` (the default path). Anything
    else raises ``ValueError`` naming the accepted values."""
    if value is None:
        return None
    dtype = value if isinstance(value, torch.dtype) else WEIGHTS_DTYPES.get(str(value).lower())
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"weights dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {value!r}")
    return None if dtype == torch.float32 else dtype


# Accepted spellings of the autocast compute dtype (the other opt-in mode: mixed-precision
# compute, float32 weights). "float32" / "no" is the default path (no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "no": None,
    "float32": None,
    "fp32": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_autocast_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``, ``"fp16"`` /
    ``"float16"`` -> ``torch.float16``; ``None``, ``"no"``, ``"float32"`` -> ``None`` (no
    autocast). Anything else raises ``ValueError`` naming the accepted values."""
    if value is None or value == torch.float32:
        return None
    if isinstance(value, torch.dtype):
        if value in (torch.bfloat16, torch.float16):
            return value
    elif str(value).lower() in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[str(value).lower()]
    raise ValueError(f"autocast dtype must be one of {', '.join(AUTOCAST_DTYPES)}, got {value!r}")


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def stored_weights_dtype(model: nn.Module) -> torch.dtype | None:
    """The storage dtype :func:`store_weights` set on ``model``, or None (float32 weights)."""
    return getattr(model, _MARK, None)


# A module whose parameters (with its descendants') take at most this many bytes in float32 is
# upcast as one unit just before its forward: a module may read its children's weights
# directly (the fusion's re-associated attention multiplies its projections' weights), so
# upcasting only each module's own parameters would leave those in bfloat16. 32 MiB holds
# the largest GLIP-T unit whole (an in-head BERT layer or a stage-4 Swin block, ~28 MiB).
_UNIT_BYTES = 32 << 20


def _float_parameters(module: nn.Module, recurse: bool) -> list[tuple[nn.Module, str]]:
    modules = module.modules() if recurse else [module]
    return [(m, n) for m in modules for n, p in m._parameters.items() if p is not None and p.is_floating_point()]


def _upcast_hook(slots: list[tuple[nn.Module, str]], dtype: torch.dtype) -> Callable[[nn.Module, Any], None]:
    def upcast(module: nn.Module, args: Any) -> None:
        stored = []
        for owner, name in slots:
            param = owner._parameters[name]
            if param is not None and param.dtype == dtype:  # not upcast already by an enclosing unit
                stored.append((owner, name, param))
                # A plain float32 tensor in the parameter slot: ``owner.weight`` reads it.
                owner._parameters[name] = param.detach().to(_COMPUTE_DTYPE)  # type: ignore[assignment]
        module.__dict__.setdefault(_STORED, []).append(stored)

    return upcast


def _restore(module: nn.Module, args: Any, output: Any) -> None:
    stack = module.__dict__.get(_STORED)
    if stack:
        for owner, name, param in stack.pop():
            owner._parameters[name] = param


def _embedding_rows_to_float(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    return output.to(_COMPUTE_DTYPE)


def _hook_units(model: nn.Module, dtype: torch.dtype) -> None:
    """Hooks every module: one whose parameters (with its children's) fit :data:`_UNIT_BYTES`
    upcasts them all, a bigger one only its own (its children have their own hooks, so a
    child called outside its parent's ``forward`` is covered too); a large ``nn.Embedding``
    upcasts its output rows instead. Nested units find their parameters upcast already."""
    for module in model.modules():
        size = sum(p.numel() for p in module.parameters() if p.is_floating_point()) * 4
        if size == 0:
            continue
        if isinstance(module, nn.Embedding) and size > _UNIT_BYTES:
            module.register_forward_hook(_embedding_rows_to_float)
            continue
        slots = _float_parameters(module, recurse=size <= _UNIT_BYTES)
        if slots:
            module.register_forward_pre_hook(_upcast_hook(slots, dtype))
            module.register_forward_hook(_restore, always_call=True)


@torch.no_grad()
def store_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Stores ``model``'s floating-point parameters in ``dtype`` and computes in float32
    (module docstring). In place; returns ``model``. For inference: the hooks swap
    parameters for detached copies, so no gradient reaches the stored weights.

    Raises:
        ValueError: ``dtype`` is not a floating-point dtype narrower than float32, or the
            model's weights are stored already.
    """
    if not dtype.is_floating_point or torch.finfo(dtype).bits >= 32:
        raise ValueError(f"the storage dtype must be a floating-point dtype narrower than float32, got {dtype}")
    if stored_weights_dtype(model) is not None:
        raise ValueError(f"the weights are stored in {stored_weights_dtype(model)} already")
    _hook_units(model, dtype)  # sizes counted in float32, before the cast
    for owner, name in _float_parameters(model, recurse=True):
        param = owner._parameters[name]
        param.data = param.data.to(dtype)
    setattr(model, _MARK, dtype)
    return model


def build_in_dtype(dtype: torch.dtype, build: Callable[[], M]) -> M:
    """``build()`` with ``dtype`` as torch's default dtype, so that the parameters are created
    (and randomly initialised) in ``dtype`` and float32 copies of all of them never exist at
    once; the floating-point buffers created in ``dtype`` are then made float32 again.

    For a model whose weights a checkpoint then overwrites: the initial values are
    ``dtype``-rounded. A buffer is restored to float32 only in dtype (its value was computed
    in ``dtype``), so every such buffer must be persistent (the checkpoint restores it);
    a non-persistent one raises ``ValueError`` naming it.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = build()
    finally:
        torch.set_default_dtype(previous)
    persistent = set(model.state_dict(keep_vars=True))
    for module_name, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is None or buf.dtype != dtype:
                continue
            full = f"{module_name}.{name}" if module_name else name
            if full not in persistent:
                raise ValueError(f"buffer {full} was computed in {dtype} and no checkpoint restores it")
            module._buffers[name] = buf.to(_COMPUTE_DTYPE)
    return model
