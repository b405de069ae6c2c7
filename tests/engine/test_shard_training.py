"""Training on streamed shards (data.train_shards, and a shard source in data.sources)."""

from __future__ import annotations

import json

import pytest
import torch

from glip.data.shards.convert import convert
from glip.engine import train
from tests.conftest import single_torch_thread
from tests.engine.conftest import tiny_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps: one thread is faster, and much faster on a busy machine."""
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def shards(shapes, tmp_path_factory):
    """The training shapes as a detection shard set (shards of 5)."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    convert("coco", shapes.train_json, shapes.image_dir, out, shard_size=5)
    return out


def test_train_on_shards_saves_the_worker_cursors(shapes, text_dir, shards, tmp_path):
    cfg = tiny_config(shapes, text_dir, **{"data.train_shards": str(shards), "data.num_workers": 2,
                                           "solver.max_iter": 1, "solver.checkpoint_period": 1})  # fmt: skip
    cfg.data.train_json = cfg.data.train_images = ""
    result = train(cfg, tmp_path / "run", cpu=True, progress_bar=False)
    assert result.progress.step == 1
    state = torch.load(result.checkpoint / "state.pt", weights_only=True)
    assert state["data"]["cursors"] == [1, 0] and state["data"]["spans"] == [[0, 16]]
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 1 and all(0 < v < 100 for v in losses)


def test_a_shard_set_as_a_source_mixed_with_a_json_source(shapes, text_dir, shards, tmp_path):
    mixed = tiny_config(shapes, text_dir, **{"solver.max_iter": 1})
    mixed.data.train_json = mixed.data.train_images = ""
    from glip.config import DataSource

    mixed.data.sources = [
        DataSource(format="coco", train_json=str(shapes.train_json), train_images=str(shapes.image_dir), name="json"),
        DataSource(format="coco", train_shards=str(shards), weight=1000.0, name="shards"),
    ]
    result = train(mixed, tmp_path / "mixed", cpu=True, progress_bar=False)
    assert result.progress.step == 1
    names = {k for x in (tmp_path / "mixed" / "metrics.jsonl").read_text().splitlines() for k in json.loads(x)}
    assert "loss/shards" in names
