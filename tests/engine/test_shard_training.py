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


def _multi_source(root, workers):
    """A shard source of 48 keyed samples (tests/data/test_shards.py) beside a map-style one."""
    from glip.data.shards import ShardStream, open_shard_set
    from glip.engine.multitask import MultiSourceData, TrainingSource
    from tests.data.test_shards import KeyBuilder, collate

    stream = ShardStream(open_shard_set(root), KeyBuilder(), seed=0)
    data = MultiSourceData([TrainingSource("shards", stream, 1.0), TrainingSource("list", list(range(40)), 1.0)], 3)

    def make_loader(dataset, sampler):
        if isinstance(dataset, ShardStream):
            return dataset.loader(sampler, collate, workers)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=list)

    return data, make_loader


def _shard_keys(data, make_loader, start, draws, rank, world, batch=2):
    """The shard source's keys read by draws ``start`` .. ``start + draws - 1`` of one process."""
    keys, it = [], data.batches(start, batch, rank, world, make_loader)
    for _ in range(draws):
        source, got = next(it)
        keys += got if source.name == "shards" else []
    return keys


def test_a_multi_source_run_resumes_its_shard_source_on_another_world_size(tmp_path, caplog):
    """2 processes x 2 workers stop after 9 draws; resumed on 1 process x 1 worker, the shard
    source reads the unread rest of its epoch (nothing lost or read twice), then whole epochs
    under the new split; the checkpoint of the new split resumes exactly on it."""
    from glip.engine.checkpoint import Progress
    from glip.engine.shard_data import resume_stream, stream_state
    from tests.data.test_shards import write_keys_set

    write_keys_set(tmp_path, 48, shard_size=7)
    old, loader = _multi_source(tmp_path, workers=2)
    seen = [k for r in (0, 1) for k in _shard_keys(old, loader, 0, 9, r, 2)]
    read_before = old.schedule.counts(9)[0]
    assert len(seen) == 2 * 2 * read_before and len(set(seen)) == len(seen) > 0
    state = stream_state(old, Progress(batch=9), 2, 2, 2)
    assert state == {"split": [2, 2, 2], "anchors": []}

    new, loader = _multi_source(tmp_path, workers=1)
    resume_stream(new, state, Progress(batch=9), 2, 1, 1, "ckpt")
    anchor = new.anchors[0]
    assert (anchor.count, anchor.epoch) == (read_before, 0) and "re-split" in caplog.text
    assert anchor.batches == (48 - len(seen)) // 2  # the rest, in batches of 2 on one process
    draws = 0
    while new.schedule.counts(9 + draws)[0] < read_before + anchor.batches:
        draws += 1
    rest = _shard_keys(new, loader, 9, draws, 0, 1)
    assert sorted(seen + rest) == sorted(f"k{i}" for i in range(48))  # the epoch, once
    # Epoch 1 under the new split: all 48 samples in 24 batches of 2.
    more = 0
    while new.schedule.counts(9 + draws + more)[0] < read_before + anchor.batches + 24:
        more += 1
    epoch1 = _shard_keys(new, loader, 9 + draws, more, 0, 1)
    assert sorted(epoch1) == sorted(f"k{i}" for i in range(48))

    # A checkpoint on the new split, mid-rest, resumes exactly on that split.
    mid = 9 + draws // 2
    saved = stream_state(new, Progress(batch=mid), 2, 1, 1)
    assert saved["anchors"][0]["anchor"] == [anchor.count, anchor.epoch, anchor.batches]
    again, loader = _multi_source(tmp_path, workers=1)
    resume_stream(again, saved, Progress(batch=mid), 2, 1, 1, "ckpt")
    assert _shard_keys(again, loader, mid, 9 + draws + more - mid, 0, 1) == (
        _shard_keys(new, loader, mid, 9 + draws + more - mid, 0, 1)
    )
