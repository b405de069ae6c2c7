"""GLIPv2 pre-training on one trunk: the MLM and inter-image heads built from config, their
batch inputs, training, inference, checkpoints, transfer freezing and configs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from glip.config import load_config
from glip.data import collate_grounding
from glip.engine import build_dataset, build_training_model, prepare_for_training, train
from glip.engine.checkpoint import checkpoint_dir
from glip.engine.optim import param_groups
from glip.engine.pretraining import pretraining_inputs
from glip.engine.trainer import LossModel, short_loss_name
from glip.modeling.build import build_heads, build_loss
from glip.modeling.heads import InterImageHead, MaskedLMHead
from glip.text.spans import normalize_class_name
from tests.engine.conftest import REPO, tiny_config

V2 = {"model.heads.mlm.enabled": "true", "model.heads.inter_image.enabled": "true"}
NEW_HEADS = ("heads.mlm.", "heads.inter_image.")
GROUNDING_LOSSES = {"loss_reg", "loss_centerness", "loss_dot_product_token"}


def _v2_config(shapes, text_dir, **extra):
    return tiny_config(shapes, text_dir, **{**V2, **extra})


@pytest.fixture(scope="module")
def v2(shapes, text_dir):
    """A tiny GLIPv2 (both heads on), its training set and a 4-image batch."""
    cfg = _v2_config(shapes, text_dir, **{"data.flip_prob": 0.0})
    torch.manual_seed(0)
    model = prepare_for_training(build_training_model(cfg), cfg)
    data = build_dataset(cfg, model.tokenizer)
    batch = collate_grounding([data[i] for i in range(4)], cfg.input.size_divisibility, cfg.model.text.max_query_len)
    return cfg, model, data, batch


def test_heads_are_built_from_their_config_sections(v2, shapes, text_dir):
    cfg, model, _, _ = v2
    assert list(model.heads) == ["grounding", "mlm", "inter_image"]
    assert isinstance(model.heads["mlm"], MaskedLMHead) and isinstance(model.heads["inter_image"], InterImageHead)
    assert model.heads["mlm"].mask_token_id == model.tokenizer.mask_token_id
    contrastive = model.heads["inter_image"].contrastive
    assert contrastive.image_proj.in_features == cfg.model.backbone.out_channels
    assert contrastive.text_proj.out_features == cfg.model.heads.inter_image.hidden_dim
    # Off by default.
    assert list(prepare_for_training(build_training_model(tiny_config(shapes, text_dir)), cfg).heads) == ["grounding"]
    bad = _v2_config(shapes, text_dir, **{"model.heads.inter_image.variant": "roi"})
    with pytest.raises(ValueError, match="variant"):
        build_heads(bad, model.text_encoder.bert.config)


def test_backbone_variant_trains_on_the_body_stride_16_map(v2, shapes, text_dir):
    """USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS: L_inter pools the Swin stage-3 map (4 x embed_dim
    wide) at the selected anchors; the model keeps the body's maps in training only, and the
    loss's gradient reaches the projection and the body's stage 3."""
    _, _, _, batch = v2
    cfg = _v2_config(shapes, text_dir, **{"data.flip_prob": 0.0, "model.heads.inter_image.variant": "backbone"})
    torch.manual_seed(0)
    model = prepare_for_training(build_training_model(cfg), cfg)
    head = model.heads["inter_image"]
    assert head.needs_backbone and head.contrastive.image_proj.in_features == 4 * cfg.model.backbone.swin.embed_dim
    loss_model = LossModel(model, build_loss(cfg), seed=0).train()
    model.zero_grad(set_to_none=True)
    losses = loss_model(batch, 0)
    assert torch.isfinite(losses["loss_inter"]) and losses["loss_inter"].item() > 0
    losses["loss_inter"].backward()
    assert head.contrastive.image_proj.weight.grad.abs().sum() > 0
    stage3 = [p for n, p in model.backbone.body.named_parameters() if n.startswith("layers.2.")]
    assert stage3 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage3)
    model.eval()
    images = batch.images
    with torch.no_grad():
        assert model(images, batch.input_ids, batch.attention_mask).trunk.backbone is None


def test_batch_carries_kinds_class_ids_greenlight_and_indices(v2):
    _, _, data, batch = v2
    assert batch.kinds == ["detection"] * 4 and batch.indices == [0, 1, 2, 3]
    vocab = {normalize_class_name(n): i for i, n in enumerate(sorted(data.ind_to_class.values()))}
    for b in range(4):
        sample = data[b]
        names = [data.ind_to_class[int(v)] for v in sample.targets.labels]
        assert batch.box_class[b].tolist() == [vocab[normalize_class_name(n)] for n in names]
        # Every box's tokens carry its class id; the greenlight covers exactly the positive names.
        pmap = sample.targets.positive_map
        for g, cls in enumerate(batch.box_class[b].tolist()):
            assert (batch.token_class[b][pmap[g]] == cls).all()
        assert torch.equal(batch.greenlight[b] == 1, pmap.any(dim=0))
        # Negative class names are labelled too (they are propagation targets of other images).
        assert int((batch.token_class[b] >= 0).sum()) > int(pmap.any(dim=0).sum())


def test_training_step_returns_every_loss_and_reaches_the_new_heads(v2):
    cfg, model, _, batch = v2
    loss_model = LossModel(model, build_loss(cfg), seed=0).train()
    model.zero_grad(set_to_none=True)
    losses = loss_model(batch, 0)
    assert set(losses) == GROUNDING_LOSSES | {"loss_inter", "loss_mlm"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, param in model.named_parameters():
        if name.startswith(NEW_HEADS):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)


def test_mlm_corruption_is_seeded_per_sample_and_step(v2):
    cfg, model, data, batch = v2
    ids_a, pre_a = pretraining_inputs(model.heads, batch, seed=0, step=3)
    ids_b, pre_b = pretraining_inputs(model.heads, batch, seed=0, step=3)
    assert torch.equal(ids_a, ids_b) and torch.equal(pre_a.mlm_labels, pre_b.mlm_labels)
    assert not torch.equal(ids_a, batch.input_ids)  # corrupted
    ids_c, _ = pretraining_inputs(model.heads, batch, seed=0, step=4)
    assert not torch.equal(ids_a, ids_c)
    # A sample's corruption depends on (seed, step, index) only, not on its batch.
    other = collate_grounding([data[2], data[0]], cfg.input.size_divisibility, cfg.model.text.max_query_len)
    ids_d, pre_d = pretraining_inputs(model.heads, other, seed=0, step=3)
    assert torch.equal(ids_d[0], ids_a[2]) and torch.equal(ids_d[1], ids_a[0])
    assert pre_d.seeds == [pre_a.seeds[2], pre_a.seeds[0]]
    # The whole model runs on the corrupted ids: the grounding loss changes with the step.
    loss_model = LossModel(model, build_loss(cfg), seed=0).train()
    with torch.no_grad():
        token_3 = loss_model(batch, 3)["loss_dot_product_token"]
        token_3b = loss_model(batch, 3)["loss_dot_product_token"]
        token_4 = loss_model(batch, 4)["loss_dot_product_token"]
    assert token_3 == token_3b and token_3 != token_4


def test_new_heads_never_run_at_inference(v2, shapes):
    _, model, _, batch = v2
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch.images, batch.input_ids, batch.attention_mask)
        assert list(out.heads) == ["grounding"]
        names = json.loads(shapes.train_json.read_text())["categories"]
        image = shapes.image_dir / json.loads(shapes.train_json.read_text())["images"][0]["file_name"]
        with_heads = model.predict(image, [c["name"] for c in names], threshold=0.0)
        heads = {k: model.heads[k] for k in ("mlm", "inter_image")}
        for k in heads:
            del model.heads[k]
        without = model.predict(image, [c["name"] for c in names], threshold=0.0)
        model.heads.update(heads)
        assert torch.equal(with_heads.boxes, without.boxes) and torch.equal(with_heads.scores, without.scores)
    finally:
        model.train()


def test_checkpoint_round_trip_and_fresh_heads_from_a_glip_checkpoint(v2, shapes, text_dir, tmp_path):
    from glip.hub.checkpoint import save_model
    from glip.hub.loading import load_model

    cfg, model, _, _ = v2
    save_model(model, tmp_path / "v2")
    loaded = load_model(tmp_path / "v2")
    assert list(loaded.heads) == ["grounding", "mlm", "inter_image"]
    state = model.state_dict()
    for k, v in loaded.state_dict().items():
        if k.startswith(NEW_HEADS):
            assert torch.equal(v, state[k]), k
    # A GLIP checkpoint (no GLIPv2 heads) loads into a GLIPv2 model: the new heads start fresh.
    glip_only = prepare_for_training(build_training_model(tiny_config(shapes, text_dir)), cfg)
    save_model(glip_only, tmp_path / "v1")
    grown = load_model(tmp_path / "v1", cfg)
    assert list(grown.heads) == ["grounding", "mlm", "inter_image"]
    assert torch.equal(grown.grounding.bbox_pred.weight, glip_only.grounding.bbox_pred.weight)


def test_transfer_modes_freeze_the_pretraining_heads(v2):
    from glip.modeling.transfer import TUNING_MODES, mode_requires_grad

    cfg, model, _, _ = v2
    new = [n for n, _ in model.named_parameters() if n.startswith(NEW_HEADS)]
    assert new
    for name, mode in TUNING_MODES.items():
        flags = mode_requires_grad(model, mode)
        assert all(flags[n] == (name == "full") for n in new), name
    # Trained (full or no transfer mode), they reach the optimiser with the base rules.
    groups = param_groups(model, cfg.solver)
    grouped = {n: g["lr"] for g in groups for n in g["names"]}
    assert set(new) <= set(grouped)
    assert grouped["heads.mlm.predictor.dense.weight"] == cfg.solver.base_lr


def _logged_steps(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_tiny_run_logs_each_term(shapes, text_dir, tmp_path):
    cfg = _v2_config(shapes, text_dir, **{"solver.max_iter": 2, "solver.model_ema": 0.0})
    train(cfg, tmp_path, cpu=True, progress_bar=False)
    steps = _logged_steps(tmp_path)
    assert [r["step"] for r in steps] == [1, 2]
    assert all({"loss_inter", "loss_mlm"} | GROUNDING_LOSSES <= set(r) for r in steps)


@pytest.mark.slow  # two more training runs with checkpoints of the MLM head: ~20 CPU-s (pytest -m slow)
def test_resume_draws_the_same_masks_and_anchors(shapes, text_dir, tmp_path):
    cfg = _v2_config(shapes, text_dir, **{"solver.max_iter": 2, "solver.checkpoint_period": 1,
                                          "solver.model_ema": 0.0})  # fmt: skip
    train(cfg, tmp_path / "a", cpu=True, progress_bar=False)
    straight = _logged_steps(tmp_path / "a")
    # Resumed from the step-1 checkpoint, step 2 draws the same masks and anchors.
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint_dir(tmp_path / "a", 1), checkpoint_dir(tmp_path / "b", 1))
    train(cfg, tmp_path / "b", cpu=True, progress_bar=False, resume=checkpoint_dir(tmp_path / "b", 1))
    resumed = _logged_steps(tmp_path / "b")
    assert [r["step"] for r in resumed] == [2]
    for key in ("loss_mlm", "loss_inter", "loss_dot_product_token"):
        assert resumed[0][key] == straight[1][key], key


def test_progress_bar_short_names():
    assert [short_loss_name(k) for k in ("loss_inter", "loss_mlm", "loss_reg", "loss_dot_product_token")] == [
        "inter", "mlm", "reg", "tok",
    ]  # fmt: skip
    assert short_loss_name("loss_new_thing") == "new_thing" and short_loss_name("mask_loss") == "mask"


def test_pretraining_configs_load_and_build():
    synthetic = load_config(REPO / "configs" / "pretrain" / "glipv2-synthetic.yaml")
    heads = synthetic.model.heads
    assert heads.mlm.enabled and heads.inter_image.enabled
    assert synthetic.solver.fusion_lr_factor == 0.1 and synthetic.data.sample_negatives
    model = build_training_model(synthetic)
    assert list(model.heads) == ["grounding", "mlm", "inter_image"]
    assert model.heads["mlm"].predictor.decoder.in_features == synthetic.model.text.dim == 384

    v2t = load_config(REPO / "configs" / "glipv2-t.yaml")
    glipt = load_config(REPO / "configs" / "glip-t.yaml")
    assert v2t.model.heads.mlm.enabled and v2t.model.heads.inter_image.enabled
    assert v2t.model.trunk.num_blocks == 6 and v2t.model.backbone.swin.embed_dim == 96
    assert v2t.model.backbone == glipt.model.backbone and v2t.model.trunk == glipt.model.trunk
    s = v2t.solver
    assert (s.base_lr, s.lang_lr, s.weight_decay, s.ims_per_batch, s.max_epoch, s.warmup_iters) == (
        1e-4, 1e-5, 1e-4, 64, 30, 2000
    )  # fmt: skip
    assert s.steps == [0.67, 0.89] and s.use_amp and s.model_ema == 0.999 and s.clip_gradients.clip_value == 1.0
    assert v2t.input.min_size_train == [480, 560, 640, 720, 800]
    # The heads at Swin-T / BERT-base width (building the whole Swin-T is left to the zoo tests).
    from glip.modeling.language.text_encoder import load_bert_config
    from glip.text import resolve_text_encoder

    built = build_heads(v2t, load_bert_config(resolve_text_encoder("bert-base-uncased")))
    assert built["mlm"].predictor.decoder.out_features == 30522
    assert built["inter_image"].contrastive.image_proj.in_features == 256


def test_official_checkpoint_names_of_the_new_heads():
    from glip.hub.official_keys import official_key_to_glip

    names = {
        "rpn.head.mlm_head.transform.dense.weight": "heads.mlm.predictor.dense.weight",
        "rpn.head.mlm_head.transform.LayerNorm.bias": "heads.mlm.predictor.norm.bias",
        "rpn.head.mlm_head.decoder.weight": "heads.mlm.predictor.decoder.weight",
        "rpn.head.mlm_head.bias": "heads.mlm.predictor.decoder.bias",
        "rpn.loss_evaluator.shallow_log_scale": "heads.inter_image.contrastive.log_scale",
        "rpn.loss_evaluator.shallow_contrastive_projection_text.weight": "heads.inter_image.contrastive.text_proj.weight",
    }
    assert {k: official_key_to_glip(k, 3) for k in names} == names
