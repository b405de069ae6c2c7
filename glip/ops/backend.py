"""Which implementation the detection ops run: torchvision's C++/CUDA kernels or pure PyTorch.

torchvision is optional. Whether it is usable is probed once, lazily, on the first op call, by
loading its compiled library alone (``import torchvision`` would also import ``torch._dynamo``,
~165 MiB of resident memory the ops do not need; only the CUDA deformable convolution imports the
package, for its ``torchvision.ops.deform_conv2d`` wrapper). The probe catches *any* exception: a torchvision wheel
built for another torch typically raises ``RuntimeError`` (e.g. ``operator torchvision::nms does not
exist``) at import time, and a wheel whose ``_C`` library fails to load may import but have no ops.

When torchvision is usable, each op takes the backend measured faster on the device its inputs
live on (:data:`PREFERRED`): on CPU the pure-PyTorch modulated deformable convolution beats
torchvision's CPU ``deform_conv2d`` (1.10 s vs 1.77 s on a [1, 256, 100, 152] 3x3 case, 8.5 vs
14.2 ms on [1, 64, 25, 38], 1 thread, torch 2.14 / torchvision 0.29), while torchvision's NMS beats
the pure one (12.8 vs 54 ms for 1000 boxes, 200 vs 390 ms for 4000), and so does its ROIAlign (0.11
vs 1.9 s for 100 regions, 14 x 14, on a [1, 256, 100, 152] map); on CUDA torchvision's kernels
are used. :func:`active_backends` says what an op call would run on a device.

Setting the environment variable ``GLIP_DISABLE_TORCHVISION=1`` forces the pure-PyTorch path without
importing torchvision at all. Tests (and callers) can force a backend for a block of code with
:func:`use_backend`, or per call with the ``backend=`` argument of the ops.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator
from typing import Any, Literal

__all__ = ["OPS", "PREFERRED", "Backend", "active_backends", "resolve_backend", "torchvision_available", "use_backend"]

Backend = Literal["torch", "torchvision"]
_BACKENDS: tuple[str, ...] = ("torch", "torchvision")
# The ops with two backends.
OPS: tuple[str, ...] = ("deform_conv2d", "nms", "roi_align")
# (op, device type) -> the backend measured faster when both are usable (module docstring);
# any pair not listed (CUDA, other accelerators) takes torchvision's kernel.
PREFERRED: dict[tuple[str, str], Backend] = {
    ("deform_conv2d", "cpu"): "torch",
    ("nms", "cpu"): "torchvision",
}
_DISABLE_ENV = "GLIP_DISABLE_TORCHVISION"

# The backend forced by `use_backend` for the current context (thread / task); None means "automatic".
_forced_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("glip_ops_backend", default=None)


def _disabled_by_env() -> bool:
    return os.environ.get(_DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@functools.lru_cache(maxsize=1)
def _probe_torchvision() -> bool:
    """Load torchvision's compiled ops (not its Python package: :func:`glip.utils.imports.load_torchvision_ops`)
    and run its NMS kernel on a tiny input; True only if all of it works."""
    try:
        import torch

        from glip.utils.imports import load_torchvision_ops

        if not load_torchvision_ops():
            return False
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
        keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.5, 1.0]), 0.5)
        if keep.tolist() != [1]:
            return False
        # deform_conv2d lives in the same compiled library; make sure the op is registered too.
        return hasattr(torch.ops.torchvision, "deform_conv2d")
    except Exception:  # noqa: BLE001 - any failure (RuntimeError, OSError, ...) means "unusable"
        return False


def torchvision_available() -> bool:
    """True if torchvision imports and its compiled ops run, and ``GLIP_DISABLE_TORCHVISION`` is not set.

    The (costly) import probe runs at most once per process; the environment variable is read on every call.
    """
    if _disabled_by_env():
        return False
    return _probe_torchvision()


def _device_type(device: Any) -> str:
    if device is None:
        return "cpu"
    return (
        device if isinstance(device, str) and ":" not in device else getattr(device, "type", str(device).split(":")[0])
    )


def resolve_backend(backend: str | None = None, *, op: str | None = None, device: Any = None) -> Backend:
    """The backend an op call should use.

    Args:
        backend (str, optional): ``"torch"``, ``"torchvision"`` or ``None``. ``None`` means the backend
            forced by an enclosing :func:`use_backend`, else (automatic choice) torch when torchvision is
            not usable, else the one :data:`PREFERRED` lists for ``(op, device type)``, else torchvision.
        op (str, optional): one of :data:`OPS`; None: any op (torchvision whenever usable).
        device (torch.device or str, optional): where the op's inputs live (default CPU).

    Raises:
        ValueError: unknown backend name.
        RuntimeError: ``"torchvision"`` was requested but is not usable.
    """
    if backend is None:
        backend = _forced_backend.get()
    if backend is None:
        if not torchvision_available():
            return "torch"
        if op is None:
            return "torchvision"
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
        return PREFERRED.get((op, _device_type(device)), "torchvision")
    if backend not in _BACKENDS:
        raise ValueError(f"unknown ops backend {backend!r}; expected one of {_BACKENDS}")
    if backend == "torchvision" and not torchvision_available():
        reason = f"{_DISABLE_ENV} is set" if _disabled_by_env() else "it does not import or its ops do not run"
        raise RuntimeError(f"the torchvision ops backend was requested but is unavailable ({reason})")
    return backend  # type: ignore[return-value]


def active_backends(device: Any = "cpu") -> dict[str, Backend]:
    """``{op: backend}`` that op calls on ``device`` would run now (environment and :func:`use_backend` included)."""
    return {op: resolve_backend(op=op, device=device) for op in OPS}


@contextlib.contextmanager
def use_backend(backend: str | None) -> Iterator[None]:
    """Force the backend of every op called inside the ``with`` block (``None`` restores automatic choice).

    Example::

        with use_backend("torch"):
            keep = nms(boxes, scores, 0.5)  # pure-PyTorch path even if torchvision is installed
    """
    if backend is not None:
        resolve_backend(backend)  # fail early on a bad or unavailable name
    token = _forced_backend.set(backend)
    try:
        yield
    finally:
        _forced_backend.reset(token)
