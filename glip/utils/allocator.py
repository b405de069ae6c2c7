"""Where glibc puts large blocks: mapped on their own, so that freeing one returns it to the system.

glibc serves blocks below its mmap threshold from its heap, and raises that threshold to
the size of any mapped block freed (up to 32 MiB). After loading, GLIP-T's activation
tensors (11-23 MiB at the finer levels of an 800 x 1216 image) therefore land in the heap,
which keeps their pages after they are freed, fragments, and grows a little with every call
(docs/performance.md, "Memory"). A fixed threshold of :data:`DEFAULT_THRESHOLD` sends every
block of that size or more to its own mapping, unmapped when freed: the resident set follows
the tensors alive, at the cost of the kernel's zero-filling of those fresh pages (measured
on GLIP-T: +2.3 s of system time on ~68 s of CPU time per call, peak RSS -174 MiB).

Allocation placement changes no value. The setting is process-wide and kept once made.

:func:`uncache_onednn_primitives` is the same idea for oneDNN (torch's CPU convolutions): its
primitive cache keeps every convolution it has made, with its buffers, for the life of the
process: off, GLIP-T's peak over repeated calls is ~20 MiB lower (median of five pairs of
bench runs) for ~1.5 % more latency, within the pairs' spread (docs/performance.md, "Memory").
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

__all__ = ["DEFAULT_THRESHOLD", "ENV", "ONEDNN_CACHE_ENV", "map_large_blocks", "uncache_onednn_primitives"]

DEFAULT_THRESHOLD = 4 << 20  # bytes; below a stage-2 map of GLIP-T (11 MiB), above its weights' small tensors
ENV = "GLIP_MMAP_THRESHOLD"  # bytes; 0 leaves glibc's own (dynamic) threshold alone
_M_MMAP_THRESHOLD = -3  # <malloc.h>
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"  # oneDNN's own; DNNL_... is its older name


@functools.cache
def map_large_blocks() -> int:
    """Sets glibc's mmap threshold to ``$GLIP_MMAP_THRESHOLD`` bytes (default
    :data:`DEFAULT_THRESHOLD`) once per process; returns the threshold set, or 0 when nothing
    was changed: not glibc, the variable is 0, or glibc's own ``MALLOC_MMAP_THRESHOLD_`` is set
    (the user's choice wins)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return 0
    try:
        threshold = int(os.environ.get(ENV, DEFAULT_THRESHOLD))
    except ValueError:
        raise ValueError(f"{ENV} must be a number of bytes (0: leave glibc alone), got {os.environ[ENV]!r}") from None
    if threshold <= 0:
        return 0
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return 0
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return threshold if mallopt(_M_MMAP_THRESHOLD, threshold) == 1 else 0


@functools.cache
def uncache_onednn_primitives() -> bool:
    """Sets ``$ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to 0 once per process, unless it (or its older
    name ``DNNL_PRIMITIVE_CACHE_CAPACITY``) is already set: the user's choice wins. oneDNN reads
    it when it makes its first primitive, so it has no effect in a process that has already
    run a CPU convolution. Returns whether it was set."""
    if ONEDNN_CACHE_ENV in os.environ or "DNNL_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ[ONEDNN_CACHE_ENV] = "0"
    return True
