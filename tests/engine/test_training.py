"""In-process training: pinned losses, the loss falls, one image is learned by heart."""

from __future__ import annotations

import json

import pytest
import torch

from glip.data import generate_synthetic
from glip.engine import build_dataset, build_training_model, prepare_for_training, train
from glip.engine.ema import ModelEMA
from glip.modeling.build import build_loss
from tests.engine.conftest import IMAGE_SIZE, tiny_config

# Losses of the seeded tiny model on the first two training images (epoch 0), float32 CPU.
GOLDEN = {
    "loss_reg": 1.0520366430282593,
    "loss_centerness": 0.692793071269989,
    "loss_dot_product_token": 2.2692487239837646,
}


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def test_golden_losses_on_a_fixed_batch(shapes, text_dir):
    from glip.data import collate_grounding

    # Recorded with one fixed caption of every class (tiny.yaml now samples and shuffles them).
    fixed_caption = {"data.sample_negatives": "false", "data.shuffle_categories": "false"}
    # ... and GLIP's 2048-wide fusion (tiny.yaml's is 256 since 2026-11-30)
    cfg = tiny_config(
        shapes, text_dir, **{"data.flip_prob": 0.0, "model.trunk.fusion_embed_dim": "2048", **fixed_caption}
    )
    torch.manual_seed(0)
    model = prepare_for_training(build_training_model(cfg), cfg)
    data = build_dataset(cfg, model.tokenizer)
    batch = collate_grounding([data[0], data[1]], cfg.input.size_divisibility, cfg.model.text.max_query_len)
    out = model(batch.images, batch.input_ids, batch.attention_mask)
    losses = build_loss(cfg)(model.heads, out, batch.attention_mask, batch.targets)
    got = {k: float(v.detach()) for k, v in losses.items()}
    print(json.dumps(got))
    assert got == pytest.approx(GOLDEN, rel=1e-4, abs=1e-5)
    sum(losses.values()).backward()
    assert model.grounding.cls_logits.weight.grad is None
    assert all(p.grad is None for p in model.text_encoder.parameters())  # text.freeze
    assert model.backbone.body.patch_embed.proj.weight.grad is not None


def test_loss_falls(shapes, text_dir, tmp_path):
    cfg = tiny_config(shapes, text_dir, **{"solver.max_iter": 16, "solver.ims_per_batch": 2, "solver.base_lr": 0.002,
                                            "solver.warmup_iters": 4, "solver.steps": "[0.9]"})  # fmt: skip
    result = train(cfg, tmp_path, cpu=True, progress_bar=False)
    assert result.progress.step == 16 and result.interrupted_by is None
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 16 and all(
        k in log[0] for k in ("loss_reg", "loss_centerness", "loss_dot_product_token", "lr")
    )
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "model" / "model.safetensors").is_file()
    # A frozen pretrained text encoder is referenced, not copied.
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("text_encoder.") for k in f.keys())


@pytest.mark.slow  # ~14 s of training on 2 cores (pytest -m slow)
def test_overfit_one_image_to_its_boxes(text_dir, tmp_path):
    one = generate_synthetic(tmp_path / "one", num_train=1, num_val=1, image_size=IMAGE_SIZE, seed=11,
                             colors=("red", "blue"), shapes=("circle", "square"), max_objects=2)  # fmt: skip
    cfg = tiny_config(one, text_dir, **{
        "solver.max_iter": 60, "solver.ims_per_batch": 1, "solver.base_lr": 0.003, "solver.warmup_iters": 5,
        "solver.steps": "[0.8]", "solver.model_ema": 0.0, "solver.max_neg_per_batch": 1.0, "data.flip_prob": 0.0,
        "train.log_period": 10,
    })  # fmt: skip
    train(cfg, tmp_path / "run", cpu=True, progress_bar=False)
    from glip.hub.loading import load_model

    model = load_model(tmp_path / "run" / "model")
    data = json.loads(one.train_json.read_text())
    names = [c["name"] for c in data["categories"]]
    det = model.predict(one.image_dir / data["images"][0]["file_name"], names, threshold=0.0)
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        gt = torch.tensor([[x, y, x + w - 1, y + h - 1]], dtype=torch.float32)
        name = next(c["name"] for c in data["categories"] if c["id"] == ann["category_id"])
        mine = [i for i, p in enumerate(det.phrases) if p == name]
        assert mine, f"no detection of {name}"
        best = det.boxes[mine[0]][None]  # the highest-scoring detection of that phrase
        assert float(_box_iou(best, gt)[0, 0]) > 0.7, (name, best, gt)


def test_ema_follows_the_official_update():
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, 0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, before * 0.9 + 0.1 * model.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_frozen_backbone_and_fpn_keep_their_weights_and_eval_mode(shapes, text_dir, tmp_path):
    from glip.engine.run import _seed_everything
    from glip.hub.loading import load_model

    cfg = tiny_config(shapes, text_dir, **{"model.backbone.freeze": True, "model.backbone.freeze_fpn": True,
                                            "solver.max_iter": 3, "solver.model_ema": 0.0})  # fmt: skip
    _seed_everything(cfg.solver.seed)
    start = build_training_model(cfg).state_dict()
    prepared = prepare_for_training(build_training_model(cfg), cfg)
    assert not prepared.backbone.body.training and not prepared.backbone.fpn.training and prepared.trunk.training
    assert not any(p.requires_grad for p in prepared.backbone.parameters())
    train(cfg, tmp_path, cpu=True, progress_bar=False)
    end = load_model(tmp_path / "model", text_encoder=str(text_dir)).state_dict()
    for name, value in start.items():
        if name.startswith("backbone."):
            assert torch.equal(end[name].float(), value.float()), name
    assert any(not torch.equal(end[n].float(), start[n].float()) for n in start if n.startswith("trunk."))
