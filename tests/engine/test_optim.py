"""Optimiser parameter groups and the learning-rate schedule against the official rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from glip.config import SolverConfig, load_config
from glip.engine.optim import (
    BODY,
    LANGUAGE,
    WarmupSchedule,
    build_optimizer,
    build_schedule,
    clip_grad_norm,
    lr_milestones,
    param_group_settings,
    param_groups,
)
from tests.conftest import OFFICIAL

# The merged official config of glip_Swin_T_O365_GoldG.yaml (SOLVER untouched by the fixture's overrides).
OFFICIAL_GLIP_T = OFFICIAL / "tiny_glip_t" / "config.yaml"


def test_param_group_rules_follow_official_make_optimizer():
    s = SolverConfig(base_lr=1e-4, lang_lr=1e-5, weight_decay=0.05, weight_decay_bias=0.0, bias_lr_factor=2.0,
                     weight_decay_norm_factor=0.5, backbone_body_lr_factor=0.1)  # fmt: skip
    # (name, part, expected lr, expected weight decay), hand-derived from solver/build.py
    cases = [
        ("text_encoder.bert.encoder.layer.0.attention.self.query.weight", LANGUAGE, 1e-5, 0.05),
        ("text_encoder.bert.encoder.layer.0.attention.self.query.bias", LANGUAGE, 2e-5, 0.0),
        ("text_encoder.bert.embeddings.LayerNorm.weight", LANGUAGE, 1e-5, 0.025),
        ("backbone.body.layers.0.blocks.0.attn.qkv.weight", BODY, 1e-5, 0.05),
        ("backbone.body.layers.0.blocks.0.norm1.weight", BODY, 1e-5, 0.025),
        ("backbone.body.layers.0.blocks.0.norm1.bias", BODY, 2e-5, 0.0),
        ("backbone.fpn.output_convs.0.weight", "", 1e-4, 0.05),
        ("heads.grounding.bias_lang", "", 2e-4, 0.0),
        ("trunk.blocks.0.fusion.norm_v.weight", "", 1e-4, 0.025),
        # official key ...DyConv.1.bn.weight: no "norm" in it, so no norm factor
        ("trunk.blocks.0.dyconv.same.norm.weight", "", 1e-4, 0.05),
        ("trunk.blocks.0.text_layer.attention.output.LayerNorm.weight", "", 1e-4, 0.025),
    ]
    for name, part, lr, wd in cases:
        got = param_group_settings(name, s, part)
        assert got == pytest.approx((lr, wd), rel=1e-12), name


def test_optimizer_groups_a_model_and_skips_frozen_parameters():
    model = nn.Module()
    model.text_encoder = nn.Linear(3, 3)
    model.head = nn.Module()
    model.head.cls_logits = nn.Conv2d(3, 3, 1)
    model.head.cls_logits.requires_grad_(False)
    model.head.box = nn.Linear(3, 4)
    opt = build_optimizer(model, SolverConfig())
    assert isinstance(opt, torch.optim.AdamW)
    names = {n for g in opt.param_groups for n in g["names"]}
    assert names == {"text_encoder.weight", "text_encoder.bias", "head.box.weight", "head.box.bias"}
    lrs = {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert lrs["text_encoder.weight"] == (1e-5, 1e-4)  # lang_lr
    assert lrs["head.box.bias"] == (2e-4, 0.0)  # bias_lr_factor, weight_decay_bias
    build_schedule(opt, SolverConfig(), 100)  # the first step's rate: x warmup_factor
    assert {n: g["lr"] for g in opt.param_groups for n in g["names"]}["head.box.bias"] == pytest.approx(2e-7)
    assert isinstance(build_optimizer(model, SolverConfig(optimizer="sgd")), torch.optim.SGD)


def _official_multistep(base, t, milestones, gamma, factor, warmup):
    # WarmupMultiStepLR.get_lr with last_epoch = t
    w = 1.0
    if t < warmup:
        alpha = t / warmup
        w = factor * (1 - alpha) + alpha
    return base * w * gamma ** sum(m <= t for m in milestones)


def test_multistep_schedule_matches_official_formula():
    s = SolverConfig(base_lr=1e-4, warmup_iters=2000, warmup_factor=0.001, steps=[0.67, 0.89], gamma=0.1)
    assert lr_milestones(s.steps, 10000) == [6700, 8900]
    sched = WarmupSchedule([1e-4, 1e-5], 10000, [6700, 8900], 0.1, 0.001, 2000)
    for t in (0, 1, 999, 1000, 1999, 2000, 6699, 6700, 8899, 8900, 9999):
        expected = [_official_multistep(b, t, [6700, 8900], 0.1, 0.001, 2000) for b in (1e-4, 1e-5)]
        assert sched.lrs(t) == pytest.approx(expected, rel=1e-12), t
    assert sched.lrs(0)[0] == pytest.approx(1e-7)
    assert sched.lrs(1000)[0] == pytest.approx(1e-4 * (0.001 * 0.5 + 0.5))
    assert sched.lrs(6700)[0] == pytest.approx(1e-5) and sched.lrs(8900)[0] == pytest.approx(1e-6)
    const = WarmupSchedule([1.0], 100, [], warmup_factor=0.25, warmup_iters=10, warmup_method="constant")
    assert const.lrs(9) == [0.25] and const.lrs(10) == [1.0]


def test_cosine_schedule_matches_official_formula():
    sched = WarmupSchedule([1e-3], 1000, [], warmup_factor=0.1, warmup_iters=100, cosine=True, min_lr=1e-6)
    assert sched.lrs(50)[0] == pytest.approx(1e-3 * (0.1 * 0.5 + 0.5))
    for t in (100, 400, 1000, 1100):
        expected = 1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * (t - 100) / 1000)) / 2
        assert sched.lrs(t)[0] == pytest.approx(expected, rel=1e-12)


def test_schedule_steps_the_optimizer_and_round_trips():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.0}])
    sched = build_schedule(opt, SolverConfig(warmup_iters=4, warmup_factor=0.5, steps=[0.5], gamma=0.1), 8)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(7):
        sched.step(opt)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.5, 0.625, 0.75, 0.875, 0.1, 0.1, 0.1, 0.1])
    again = build_schedule(opt, SolverConfig(warmup_iters=4, warmup_factor=0.5, steps=[0.5], gamma=0.1), 8)
    again.load_state_dict(sched.state_dict())
    assert again.lrs(again.step_count) == sched.lrs(sched.step_count)


def test_full_model_clipping_clips_the_global_norm():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    norm = clip_grad_norm([a, b], SolverConfig())
    assert float(norm) == pytest.approx(math.sqrt(27 + 64))
    total = torch.cat([a.grad, b.grad]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.needs_fixtures
def test_official_solver_keys_map_to_the_solver_section():
    cfg = load_config(OFFICIAL_GLIP_T)
    s = cfg.solver
    assert (s.optimizer, s.base_lr, s.lang_lr, s.weight_decay) == ("adamw", 1e-4, 1e-5, 1e-4)
    assert s.steps == [0.67, 0.89] and s.max_epoch == 30 and s.ims_per_batch == 64
    assert (s.warmup_iters, s.warmup_factor, s.use_amp, s.model_ema) == (2000, 0.001, True, 0.999)
    assert s.clip_gradients.enabled and s.clip_gradients.clip_value == 1.0
    assert s.bias_lr_factor == 2.0 and s.weight_decay_bias == 0.0  # official defaults
    g = cfg.model.heads.grounding
    assert (g.reg_weight, g.atss_topk, g.token_alpha, g.token_gamma) == (2.0, 9, 0.25, 2.0)


def test_language_and_body_rates_follow_the_modules_not_the_names():
    model = nn.Module()
    model.text_encoder = nn.Linear(3, 3)
    model.backbone = nn.Module()
    model.backbone.body = nn.Linear(3, 3)
    model.backbone.fpn = nn.Linear(3, 3)
    model.heads = nn.ModuleDict({"any_new_head": nn.Linear(3, 3)})
    s = SolverConfig(base_lr=1e-4, lang_lr=1e-5, backbone_body_lr_factor=0.1, bias_lr_factor=2.0)
    lrs = {n: g["lr"] for g in param_groups(model, s) for n in g["names"]}
    assert lrs == pytest.approx({
        "text_encoder.weight": 1e-5, "text_encoder.bias": 2e-5, "backbone.body.weight": 1e-5,
        "backbone.body.bias": 2e-5, "backbone.fpn.weight": 1e-4, "backbone.fpn.bias": 2e-4,
        "heads.any_new_head.weight": 1e-4, "heads.any_new_head.bias": 2e-4,
    })  # fmt: skip


def test_fusion_lr_factor_scales_the_fusion_and_in_head_text_layers_only():
    from glip.modeling.fusion.bi_attention import BiAttentionBlock
    from glip.modeling.language.text_layer import TextLayer

    model = nn.Module()
    model.head = nn.Module()
    model.head.fusion = BiAttentionBlock(8, 12, embed_dim=16, num_heads=2)
    model.head.text_layer = TextLayer(12, 2, 24)
    model.head.box = nn.Linear(3, 4)
    solver = SolverConfig(base_lr=1e-3, fusion_lr_factor=0.1, bias_lr_factor=2.0)
    lrs = {n: g["lr"] for g in build_optimizer(model, solver).param_groups for n in g["names"]}
    assert lrs["head.box.weight"] == pytest.approx(1e-3)
    assert lrs["head.box.bias"] == pytest.approx(2e-3)
    for name, lr in lrs.items():
        if name.startswith(("head.fusion.", "head.text_layer.")):
            assert lr == pytest.approx(2e-4 if "bias" in name else 1e-4), name
    # The default is the official rule: no factor.
    default = {n: g["lr"] for g in build_optimizer(model, SolverConfig(base_lr=1e-3)).param_groups for n in g["names"]}
    assert default["head.fusion.attn.out_l_proj.weight"] == pytest.approx(1e-3)


def test_tower_lr_factor_scales_the_dyconv_branches_only():
    from glip.modeling.fusion.dyhead import DyConv

    model = nn.Module()
    model.tower = DyConv(8, 8, use_dyrelu=False, use_dfconv=False, gn_groups=4)
    model.box = nn.Linear(3, 4)
    lrs = {n: g["lr"] for g in build_optimizer(model, SolverConfig(base_lr=1e-3, tower_lr_factor=0.1)).param_groups for n in g["names"]}  # fmt: skip
    assert lrs["box.weight"] == pytest.approx(1e-3)
    tower = {n: lr for n, lr in lrs.items() if n.startswith("tower.")}
    assert tower and all(lr == pytest.approx(2e-4 if "bias" in n else 1e-4) for n, lr in tower.items())
