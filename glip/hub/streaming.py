"""Reading a ``.safetensors`` file into an already-built model one tensor at a time.

:func:`glip.hub.checkpoint.load_model` used to read the whole file into memory and then
copy it into the model: for a moment the process held the weights twice. Here the file's
header is read first into *meta* tensors (shape and dtype, no data), so the key remapping
and the strict key/shape checks run on them unchanged; then each tensor's bytes are read
straight from the file into the model's own parameter (or through one temporary of that
tensor's size when the dtype differs, e.g. a float16 folder), so the extra memory is one
tensor, never a second copy of the model. Reads go through plain ``readinto`` (the page
cache, not this process's memory), and the values are bit-identical to
``model.load_state_dict(safetensors.torch.load_file(path))``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["SafetensorsIndex", "index_safetensors", "stream_state_into"]

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass
class SafetensorsIndex:
    """Where each tensor of a ``.safetensors`` file lies.

    Attributes:
        path: the file.
        tensors: key -> a meta tensor of the stored shape and dtype (no data).
        spans: ``id(meta tensor)`` -> absolute ``(begin, end)`` byte offsets in the file,
            so a renamed key (the same meta tensor under another name) still finds its bytes.
    """

    path: Path
    tensors: dict[str, Tensor]
    spans: dict[int, tuple[int, int]]


def index_safetensors(path: str | Path) -> SafetensorsIndex:
    """The header of a ``.safetensors`` file as meta tensors; raises ``ValueError`` when the
    header is malformed, names an unknown dtype, or points past the end of the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("file shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > size - 8:
            raise ValueError(f"header length {length} exceeds the file size {size}")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    start = 8 + length
    tensors: dict[str, Tensor] = {}
    spans: dict[int, tuple[int, int]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if dtype is None:
            raise ValueError(f"{key}: unsupported or missing dtype")
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        meta = torch.empty(shape, dtype=dtype, device="meta")
        if end < begin or end - begin != meta.numel() * meta.element_size() or start + end > size:
            raise ValueError(f"{key}: data offsets {begin}..{end} do not fit its shape or the file")
        tensors[key] = meta
        spans[id(meta)] = (start + begin, start + end)
    return SafetensorsIndex(path, tensors, spans)


@torch.no_grad()
def stream_state_into(model: torch.nn.Module, state: Mapping[str, Tensor], index: SafetensorsIndex) -> None:
    """Copies ``state`` into ``model``'s parameters and buffers, as
    ``model.load_state_dict(state)`` would (dtype casts included), after the caller has
    checked that keys and shapes match. Values that are meta tensors of ``index`` are read
    from its file; any other value (a real tensor) is copied as is."""
    targets = model.state_dict(keep_vars=False)
    with open(index.path, "rb") as f:
        for key, value in state.items():
            target = targets[key]
            span = index.spans.get(id(value)) if value.is_meta else None
            if span is None:
                target.copy_(value)
                continue
            begin, end = span
            f.seek(begin)
            if (
                value.dtype == target.dtype
                and target.device.type == "cpu"
                and target.is_contiguous()
                and target.dtype != torch.bfloat16  # numpy has no bfloat16
            ):
                read = f.readinto(target.view(-1).numpy().view("u1")) if end > begin else 0
            else:
                buf = bytearray(end - begin)
                read = f.readinto(buf)
                if end > begin:
                    target.copy_(torch.frombuffer(buf, dtype=value.dtype).view(value.shape))
                del buf
            if read != end - begin:
                raise ValueError(f"{key}: the file ended early (truncated)")
