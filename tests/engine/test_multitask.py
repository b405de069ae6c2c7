"""Multi-task training (glip.engine.multitask): the weighted source schedule (proportions,
resumption, the same draws on every process) and configs/multitask/synthetic.yaml training
detection + masks + VQA + captions in one run, each task's loss logged and each head
reached by gradients."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from glip.engine.data import ShardedBatchSampler
from glip.engine.multitask import MultiSourceData, SourceSchedule, TrainingSource
from tests.engine.conftest import IMAGE_SIZE, REPO

MULTITASK_YAML = REPO / "configs" / "multitask" / "synthetic.yaml"


def test_source_proportions_over_10k_draws_are_within_2_percent_of_the_weights() -> None:
    weights = [2.0, 1.0, 0.5, 0.5]  # e.g. official copies x images of each dataset
    for seed in (0, 42):
        picks = SourceSchedule(weights, seed).sources(0, 10_000)
        share = np.bincount(picks, minlength=len(weights)) / 10_000
        np.testing.assert_allclose(share, np.asarray(weights) / sum(weights), atol=0.02)
    # Not a constant sequence: another seed reorders the draws.
    assert not np.array_equal(SourceSchedule(weights, 0).sources(0, 100), SourceSchedule(weights, 1).sources(0, 100))


def test_schedule_pieces_agree() -> None:
    s = SourceSchedule([1.0, 3.0], seed=5)
    whole = s.sources(0, 3000)
    assert [s.source_at(d) for d in (0, 1023, 1024, 2999)] == [whole[0], whole[1023], whole[1024], whole[2999]]
    np.testing.assert_array_equal(s.sources(1000, 2100), whole[1000:2100])
    assert s.counts(2100) == np.bincount(whole[:2100], minlength=2).tolist()
    with pytest.raises(ValueError, match="positive"):
        SourceSchedule([1.0, 0.0], seed=0)


class _Numbers(Dataset):
    """Items ``(name, index, epoch)``: what was read, in which epoch."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size, self.epoch = name, size, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, item: int) -> tuple[str, int, int]:
        return self.name, item, self.epoch


def _loader(dataset: Dataset, sampler: ShardedBatchSampler) -> DataLoader:
    dataset.set_epoch(sampler.epoch)  # type: ignore[attr-defined]
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=list)


def _mix(seed: int = 3) -> MultiSourceData:
    sources = [
        TrainingSource("det", _Numbers("det", 10), 2.0, seed=1),
        TrainingSource("vqa", _Numbers("vqa", 7), 1.0, seed=2),
        TrainingSource("cap", _Numbers("cap", 5), 1.0, seed=3),
    ]
    return MultiSourceData(sources, seed)


def _read(mix: MultiSourceData, start: int, n: int, rank: int = 0, world: int = 1) -> list:
    out = []
    for source, batch in mix.batches(start, 2, rank, world, _loader):
        out.append((source.name, batch))
        if len(out) == n:
            return out
    return out


def test_resume_mid_epoch_continues_the_same_sequence() -> None:
    full = _read(_mix(), 0, 60)
    # Every source is read over several epochs, each a new permutation of all its items.
    for name, size in (("det", 10), ("vqa", 7), ("cap", 5)):
        items = [item for n, batch in full if n == name for item in batch]
        epochs = {e for _, _, e in items}
        assert len(epochs) >= 2
        first = [i for _, i, e in items if e == 0]
        assert len(first) == (size // 2) * 2 and len(set(first)) == len(first)
    for start in (1, 17, 37):  # mid-epoch for the sources
        assert _read(_mix(), start, 60 - start) == full[start:]  # a fresh object: only the draw count is carried
    # Another run seed draws another sequence.
    assert [n for n, _ in _read(_mix(seed=4), 0, 60)] != [n for n, _ in full]


def test_every_process_draws_the_same_source_and_its_own_shard() -> None:
    one = _read(_mix(), 0, 30, rank=0, world=2)
    two = _read(_mix(), 0, 30, rank=1, world=2)
    assert [n for n, _ in one] == [n for n, _ in two]
    for (_, a), (_, b) in zip(one, two):
        assert not {i for _, i, _ in a} & {i for _, i, _ in b}


def _multitask_config(shapes, text_dir, **extra):
    from glip.config import load_config

    root, images = shapes.root, shapes.image_dir
    sources = (
        f"[{{format: coco, train_json: '{root / 'train.json'}', train_images: '{images}', weight: 1}},"
        f" {{format: vqa, train_json: '{root / 'vqa_train.json'}', train_images: '{images}', weight: 1}},"
        f" {{format: captions, train_json: '{root / 'captions_train.json'}', train_images: '{images}', weight: 1}}]"
    )
    values = {
        "model.text.encoder": str(text_dir),
        "model.text.max_query_len": 32,
        "model.backbone.swin.drop_path_rate": 0.0,
        "model.heads.vqa.min_answer_count": 3,
        "model.heads.caption.max_length": 4,
        "input.min_size_train": f"[{IMAGE_SIZE}]",
        "input.max_size_train": IMAGE_SIZE,
        "input.min_size_test": IMAGE_SIZE,
        "input.max_size_test": IMAGE_SIZE,
        "solver.seed": 1,  # its first 3 draws are coco, vqa, captions
        "solver.ims_per_batch": 1,
        "solver.max_iter": 3,
        "solver.warmup_iters": 1,
        "solver.checkpoint_period": 0,
        "train.log_period": 1,
        "data.sources": sources,
        **extra,
    }
    return load_config(MULTITASK_YAML, [f"{k}={v}" for k, v in values.items()])


@pytest.fixture(scope="module")
def multitask_run(shapes, text_dir, tmp_path_factory):
    """3 steps of configs/multitask/synthetic.yaml (tiny), recording per step the heads whose
    parameters got a non-zero gradient."""
    import glip.engine.trainer as trainer_module
    from glip.engine import train

    cfg = _multitask_config(shapes, text_dir)
    out = tmp_path_factory.mktemp("multitask")
    models: list = []
    reached: list[set[str]] = []
    clip, init = trainer_module.clip_grad_norm, trainer_module.Trainer.__init__

    def recording_init(self, cfg, model, *args, **kwargs):
        models.append(model)
        init(self, cfg, model, *args, **kwargs)

    def recording_clip(parameters, solver):
        heads = models[-1].heads
        reached.append(
            {
                n
                for n, h in heads.items()
                if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in h.parameters())
            }
        )
        return clip(parameters, solver)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "clip_grad_norm", recording_clip)
        mp.setattr(trainer_module.Trainer, "__init__", recording_init)
        result = train(cfg, out, cpu=True, progress_bar=False)
    return cfg, out, result, reached


def test_multitask_config_trains_every_head(multitask_run) -> None:
    cfg, tmp_path, result, reached = multitask_run
    draws = SourceSchedule([s.weight for s in cfg.data.sources], cfg.solver.seed).sources(0, 3)
    assert set(draws.tolist()) == {0, 1, 2}  # the seed's first draws visit every task
    assert result.progress.step == 3 and result.progress.skipped == 0

    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    names = ["coco", "vqa", "captions"]
    assert [next(n for n in names if f"loss/{n}" in r) for r in log] == [names[i] for i in draws]
    for row in log:
        assert all(math.isfinite(v) for k, v in row.items() if k.startswith("loss"))
        if "loss/coco" in row:
            assert {"loss_mask", "loss_dot_product_token"} <= row.keys() and "loss_caption" not in row
        if "loss/vqa" in row:
            assert "loss_vqa" in row and "loss_caption" not in row
        if "loss/captions" in row:
            assert "loss_caption" in row and "loss_dot_product_token" not in row
    # Gradients reach each head, on the steps of its task.
    by_task = {names[i]: set() for i in draws}
    for i, heads in zip(draws, reached):
        by_task[names[i]] |= heads
    assert {"grounding", "mask"} <= by_task["coco"]
    assert {"vqa", "grounding"} <= by_task["vqa"]
    assert "caption" in by_task["captions"] and "grounding" not in by_task["captions"]

    import glip

    model = glip.load_model(tmp_path / "model", device="cpu")
    assert {"grounding", "mask", "vqa", "caption"} <= set(model.heads.keys())
    assert torch.is_tensor(model.heads["vqa"].classifier.classifier.weight)


def test_sources_refuse_the_single_source_files(shapes, text_dir) -> None:
    from glip.engine.multitask import build_training_data

    cfg = _multitask_config(shapes, text_dir, **{"data.train_json": str(shapes.train_json)})
    with pytest.raises(ValueError, match="not read when data.sources is set"):
        build_training_data(cfg, tokenizer=None)


@pytest.mark.slow  # two more tiny runs (~20 CPU-s)
def test_multitask_resume_equals_uninterrupted(multitask_run, tmp_path) -> None:
    from glip.engine import train
    from glip.engine.checkpoint import latest_checkpoint, load_state

    cfg, reference, _, _ = multitask_run
    train(cfg, tmp_path, cpu=True, progress_bar=False, max_steps=2)
    result = train(cfg, tmp_path, cpu=True, progress_bar=False, resume=True)
    assert result.progress.step == 3
    ref, got = load_state(latest_checkpoint(reference)), load_state(latest_checkpoint(tmp_path))
    assert got["progress"] == ref["progress"]
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    logged = [(tmp_path / "metrics.jsonl").read_text(), (reference / "metrics.jsonl").read_text()]
    strip = [[{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in t.splitlines()] for t in logged]
    assert strip[0] == strip[1]
