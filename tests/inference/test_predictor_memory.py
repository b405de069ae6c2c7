"""What a Predictor call keeps alive (glip.inference.predictor)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import glip
from glip.inference.processor import Processor


@pytest.fixture(scope="module")
def predictor() -> glip.Predictor:
    return glip.Predictor("demo-shapes", device="cpu")


@pytest.mark.parametrize("count,batch_size", [(2, 2)])
def test_preprocessed_images_are_freed_once_batched(predictor, monkeypatch, count, batch_size) -> None:
    """The padded batch is the only copy of the pixels while the network runs (800 x 1216:
    11 MiB less per image)."""
    made: list[weakref.ref] = []
    call = Processor.__call__

    def recording(self, image):
        tensor, size = call(self, image)
        made.append(weakref.ref(tensor))
        return tensor, size

    alive: list[int] = []

    def count_alive(module, args):
        gc.collect()
        alive.append(sum(ref() is not None for ref in made))

    images = [np.full((60, 90, 3), 40 * (i + 1), np.uint8) for i in range(count)]
    monkeypatch.setattr(Processor, "__call__", recording)
    handle = predictor.model.backbone.register_forward_pre_hook(count_alive)
    try:
        detections = predictor.predict(images, "a red circle. a blue square.", batch_size=batch_size)
    finally:
        handle.remove()
    assert len(made) == count == len(detections) and alive == [0]
