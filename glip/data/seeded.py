"""The base of the training datasets: per-sample random draws seeded by ``(seed, epoch, index)``.

A sample's random decisions (caption order, negatives, resize size, flip) come from a
:class:`SampleRNG` derived from ``(seed, epoch, index)`` alone, so a sample does not depend
on the worker that loads it, on what was loaded before or on an interrupted and resumed run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from glip.data.json_index import IdArray
from glip.data.od_to_grounding import SampleRNG

if TYPE_CHECKING:
    from glip.data.grounding_sample import GroundingSample

__all__ = ["SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch, independent of the loading order."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededDataset(Dataset):
    """Samples keyed by ``ids``, each drawn with its own generator.

    ``dataset[i]`` is ``load(i, sample_rng(i))`` with ``sample.index = i`` (the dataset index
    that seeds the per-step draws of the loss: MLM, caption masking). Subclasses implement
    :meth:`load`; a wrapper that repeats the data (``RepeatDataset``) calls it with the
    generator of its own position.

    Args:
        ids: one key per sample, in sample order (json image ids; for question data, the
            image id of each question).
        seed: base of the per-sample seeds.
    """

    def __init__(self, ids: Sequence[Any], seed: int) -> None:
        # An index's id array stays an array (no Python int per sample, nothing copied on read).
        self.ids: Sequence[Any] = ids if isinstance(ids, IdArray) else list(ids)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_ids(self) -> list[Any]:
        """The json image id of each sample, in sample order."""
        return list(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Changes the per-sample seeds (call before each epoch's loader is iterated)."""
        self.epoch = epoch

    def sample_rng(self, item: int) -> SampleRNG:
        """The generator of position ``item`` in the current epoch."""
        return SampleRNG.from_seed(sample_seed(self.seed, self.epoch, item))

    def __getitem__(self, item: int) -> GroundingSample:
        sample = self.load(item, self.sample_rng(item))
        sample.index = item
        return sample

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        """Sample ``item`` drawn with ``rng``."""
        raise NotImplementedError
