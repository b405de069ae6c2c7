"""Per-sample random streams: draws that depend only on (run seed, epoch or step, sample).

A sample's random decisions (which tokens MLM masks, which anchors the inter-image loss
keeps) come from its own ``torch.Generator`` seeded with :func:`sample_seed`. They are
then the same whatever the batch composition, the number of processes or an interrupted
and resumed run, because nothing else draws from that stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["STREAM_INTER_IMAGE", "STREAM_MLM", "sample_generators", "sample_seed", "stream_generators"]

# Sub-streams of one sample's per-step seed: each consumer of per-sample randomness draws
# from its own (MLM corruption, the inter-image loss's anchor sampling), so adding or
# removing one does not change the other's draws.
STREAM_MLM = 1
STREAM_INTER_IMAGE = 2

_MASK64 = (1 << 64) - 1
# SplitMix64 constants (Steele, Lea and Flood 2014, "Fast splittable pseudorandom number generators").
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def sample_seed(*keys: int) -> int:
    """A well-mixed seed in ``[0, 2**63)`` for a tuple of integers, e.g. ``(seed, epoch, index)``.

    Different tuples give unrelated streams (a plain ``seed + index`` would make sample
    ``i`` of epoch ``e + 1`` replay sample ``i + 1`` of epoch ``e``).
    """
    state = 0
    for key in keys:
        state = _splitmix64(state ^ (int(key) & _MASK64))
    return state >> 1


def sample_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed, on ``device``."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def stream_generators(seeds: Sequence[int], stream: int) -> list[torch.Generator]:
    """CPU generators of sub-stream ``stream`` of each per-sample seed
    (``sample_seed(seed, stream)``)."""
    return sample_generators([sample_seed(int(s), stream) for s in seeds])
