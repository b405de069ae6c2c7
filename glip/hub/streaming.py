"""Reading a ``.safetensors`` file into an already-built model one tensor at a time.

:func:`glip.hub.loading.load_model` used to read the whole file into memory and then
copy it into the model: for a moment the process held the weights twice. Here the file's
header is read first into *meta* tensors (shape and dtype, no data), so the key remapping
and the strict key/shape checks run on them unchanged; then each tensor's bytes are read
straight from the file into the model's own parameter (or through one temporary of that
tensor's size when the dtype differs, e.g. a float16 folder), so the extra memory is one
tensor, never a second copy of the model. Reads go through plain ``readinto`` (the page
cache, not this process's memory), and the values are bit-identical to
``model.load_state_dict(safetensors.torch.load_file(path))``.

An official ``.pth`` (torch's zip format) is read with ``torch.load(mmap=True)``: its
tensors are views of one private, read-only mapping of the file, and nothing is read until
touched. Copying them into the model faults the file's pages into this process (they count
in its resident set like any other memory), so after each tensor is copied its pages are
handed back with ``madvise(MADV_DONTNEED)`` (:func:`release_mapped`): the extra memory is
again about one tensor, and the values are those ``torch.load`` without ``mmap`` gives.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "MappedFile",
    "SafetensorsIndex",
    "index_safetensors",
    "mapped_file",
    "release_mapped",
    "sparse_tables",
    "stream_state_into",
]

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


@dataclass(frozen=True)
class MappedFile:
    """The address ranges at which this process maps a file (``/proc/self/maps``).

    Attributes:
        path: the file.
        ranges: ``(start, end)`` virtual addresses of each mapping of it, page-aligned.
    """

    path: Path
    ranges: tuple[tuple[int, int], ...]


def mapped_file(path: str | Path) -> MappedFile:
    """Where ``path`` is mapped into this process now (matched by device and inode); no
    ranges where ``/proc/self/maps`` cannot be read (not Linux)."""
    path = Path(path)
    st = os.stat(path)
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                # "start-end perms offset major:minor inode path"
                fields = line.split(maxsplit=5)
                if len(fields) < 5 or int(fields[4]) != st.st_ino:
                    continue
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                if os.makedev(major, minor) != st.st_dev:
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    except OSError:
        pass
    return MappedFile(path, tuple(ranges))


def _madvise() -> ctypes._CFuncPtr | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()
_MADV_DONTNEED = 4  # <sys/mman.h> on Linux


def _inside(tensor: Tensor, mapped: MappedFile) -> bool:
    """Whether ``tensor``'s storage lies in one of ``mapped``'s ranges."""
    if tensor.device.type != "cpu" or tensor.layout != torch.strided:
        return False
    begin = tensor.untyped_storage().data_ptr()
    size = tensor.untyped_storage().nbytes()
    return any(start <= begin and begin + size <= end for start, end in mapped.ranges)


def release_mapped(tensor: Tensor, mapped: MappedFile) -> bool:
    """Drops the resident pages under ``tensor``'s storage when that storage lies inside one
    of ``mapped``'s ranges (a private mapping that nothing wrote: a later read faults the
    same bytes back in from the file); True when pages were released. Any other tensor,
    or any platform without ``madvise``, is left alone."""
    if _MADVISE is None or tensor.device.type != "cpu" or tensor.layout != torch.strided:
        return False
    storage = tensor.untyped_storage()
    begin, size = storage.data_ptr(), storage.nbytes()
    for start, end in mapped.ranges:
        if start <= begin and begin + size <= end:
            page = mmap.PAGESIZE
            # Whole pages, rounded outward: the neighbours' bytes on a shared page are
            # re-read from the file when they are copied in turn.
            lo, hi = begin // page * page, min(end, -(-(begin + size) // page) * page)
            return size > 0 and _MADVISE(lo, hi - lo, _MADV_DONTNEED) == 0
    return False


def sparse_tables(model: torch.nn.Module, min_bytes: int = 8 * 2**20) -> set[str]:
    """The state-dict keys of ``model``'s float32 CPU embedding tables of at least
    ``min_bytes`` that no other parameter shares: tables that inference reads a few rows of
    (BERT's word table: 30522 rows, a prompt looks up tens), worth leaving in their file
    (:func:`stream_state_into`'s ``keep_mapped``)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[p.data_ptr()] = counts.get(p.data_ptr(), 0) + 1
    return {
        f"{name}.weight" if name else "weight"
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Embedding)
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
        and m.weight.nbytes >= min_bytes
        and counts[m.weight.data_ptr()] == 1
    }


def _map_span(path: Path, begin: int, end: int, dtype: torch.dtype, shape: torch.Size) -> Tensor | None:
    """Bytes ``begin..end`` of ``path`` as a tensor backed by a private, copy-on-write
    mapping (pages read from the file when touched, never written back); None where the
    file cannot be mapped or the bytes are misaligned for ``dtype``."""
    granule = mmap.ALLOCATIONGRANULARITY
    start = begin // granule * granule
    if (begin - start) % torch.empty(0, dtype=dtype).element_size():
        return None
    try:
        with open(path, "rb") as f:
            view = mmap.mmap(
                f.fileno(), end - start, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start
            )
    except (OSError, ValueError, AttributeError):  # no MAP_PRIVATE (Windows), an unmappable file
        return None
    count = (end - begin) // torch.empty(0, dtype=dtype).element_size()
    # frombuffer holds a reference to the mapping for as long as the tensor lives
    return torch.frombuffer(view, dtype=dtype, count=count, offset=begin - start).view(shape)


def _assign(model: torch.nn.Module, key: str, value: Tensor) -> None:
    """Makes ``value`` the parameter ``key`` of ``model`` (same ``requires_grad``)."""
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    old = getattr(module, name)
    setattr(module, name, torch.nn.Parameter(value, requires_grad=old.requires_grad))


@torch.no_grad()
def stream_state_into(
    model: torch.nn.Module,
    state: Mapping[str, Tensor],
    index: SafetensorsIndex | None = None,
    *,
    mapped: MappedFile | None = None,
    keep_mapped: Collection[str] = (),
) -> None:
    """Copies ``state`` into ``model``'s parameters and buffers, as
    ``model.load_state_dict(state)`` would (dtype casts included), after the caller has
    checked that keys and shapes match. Values that are meta tensors of ``index`` are read
    from its file; any other value (a real tensor) is copied as is, and when it lies in
    ``mapped`` (a ``torch.load(mmap=True)`` of a ``.pth``) its pages are released right after.

    The parameters named in ``keep_mapped`` (:func:`sparse_tables`) are not copied when their
    stored dtype is theirs: they become views of a private mapping of the file, so only the
    pages a forward pass reads count in the resident set. Values are the same bit for bit.
    """
    targets = model.state_dict(keep_vars=False)
    if index is None:
        for key, value in state.items():
            if (
                key in keep_mapped
                and mapped is not None
                and _inside(value, mapped)
                and value.dtype == targets[key].dtype
            ):
                _assign(model, key, value)
                continue
            targets[key].copy_(value)
            if mapped is not None:
                release_mapped(value, mapped)
        return
    with open(index.path, "rb") as f:
        for key, value in state.items():
            target = targets[key]
            span = index.spans.get(id(value)) if value.is_meta else None
            if span is None:
                target.copy_(value)
                continue
            if key in keep_mapped and value.dtype == target.dtype:
                view = _map_span(index.path, *span, value.dtype, value.shape)
                if view is not None:
                    _assign(model, key, view)
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
