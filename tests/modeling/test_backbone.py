"""Visual backbone: parity with the official Swin + FPN, checkpoint layout, ResNet body."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import yaml

from glip.hub.official_keys import remap_official_state_dict
from glip.modeling.backbone import FPN, ResNet, SwinTransformer, VisionBackbone, build_resnet, build_swin
from glip.modeling.backbone.swin_attention import relative_position_index, shifted_window_mask
from tests.conftest import CASES, OFFICIAL, TINY_CONFIGS, load_case, official_state_dict

ATOL = RTOL = 1e-4


def _swin_settings(config: str) -> dict:
    """Backbone sizes of a fixture config, from its merged official config.yaml."""
    cfg = yaml.safe_load((OFFICIAL / config / "config.yaml").read_text())["MODEL"]
    swint = cfg["SWINT"]
    assert swint["VERSION"] == "v1" and not swint["APE"] and cfg["BACKBONE"]["CONV_BODY"] == "SWINT-FPN-RETINANET"
    return {
        "embed_dim": swint["EMBED_DIM"],
        "depths": tuple(swint["DEPTHS"]),
        "num_heads": tuple(swint["NUM_HEADS"]),
        "window_size": swint["WINDOW_SIZE"],
        "mlp_ratio": float(swint["MLP_RATIO"]),
        "out_channels": cfg["BACKBONE"]["OUT_CHANNELS"],
    }


def _backbone_state_dict(config: str) -> dict[str, torch.Tensor]:
    remapped = remap_official_state_dict(official_state_dict(config))
    return {k[len("backbone.") :]: v for k, v in remapped.items() if k.startswith("backbone.")}


@functools.cache
def _case(config: str, case: str) -> dict:
    return load_case(config, case)


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module", params=TINY_CONFIGS)
def tiny_official(request) -> tuple[str, dict, dict[str, torch.Tensor]]:
    return request.param, _swin_settings(request.param), _backbone_state_dict(request.param)


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.needs_fixtures
def test_swin_fpn_matches_official(tiny_official, case: str, fused: bool) -> None:
    config, s, state = tiny_official
    expected = _case(config, case)
    model = build_swin(**s, fused_attention=fused).eval()
    model.load_state_dict(state, strict=True)
    # The same weights with stage 1 exposed too (norm0 is the identity: no extra keys).
    body = SwinTransformer(
        s["embed_dim"], s["depths"], s["num_heads"], s["window_size"], s["mlp_ratio"],
        out_indices=(0, 1, 2, 3), fused_attention=fused,
    ).eval()  # fmt: skip
    body.load_state_dict({k[len("body.") :]: v for k, v in state.items() if k.startswith("body.")}, strict=True)

    with torch.no_grad():
        levels = model(expected["image_tensor"])
        stages = body(expected["image_tensor"])

    assert len(stages) == len(expected["swin_outputs"]) == 4
    for ours, ref in zip(stages, expected["swin_outputs"]):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)
    assert len(levels) == len(expected["fpn_outputs"]) == 5
    for ours, ref in zip(levels, expected["fpn_outputs"]):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------- checkpoint layout


def _official_backbone_shapes(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``backbone.*`` keys of a full-size official checkpoint, renamed, with shape and dtype."""
    entries = json.loads((OFFICIAL / f"keys_{name}.json").read_text())["keys"]
    fake = {e["key"]: torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]), device="meta") for e in entries}
    renamed = remap_official_state_dict(fake)
    return {k[len("backbone.") :]: (tuple(v.shape), v.dtype) for k, v in renamed.items() if k.startswith("backbone.")}


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("glip_t", {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7}),
        ("glip_l", {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48), "window_size": 12}),
    ],
)
@pytest.mark.needs_fixtures
def test_full_size_swin_matches_official_keys(name: str, settings: dict) -> None:
    expected = _official_backbone_shapes(name)
    with torch.device("meta"):
        model = build_swin(**settings, out_channels=256)
    ours = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    mismatched = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert mismatched == {}
    # relative_position_index is a persistent int64 buffer; everything else a parameter.
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == {k for k in expected if k.endswith("relative_position_index")}


def test_relative_position_index_and_shift_mask() -> None:
    index = relative_position_index(3)
    assert index.dtype == torch.int64 and index.shape == (9, 9)
    assert index[0, 0] == index[4, 4] == 12  # zero offset sits at the table's centre ((2*3-1)**2 // 2)
    assert index[0, 8] == 0 and index[8, 0] == 24  # offsets (-2, -2) and (+2, +2)
    mask = shifted_window_mask((6, 6), window_size=3, shift=1)
    assert mask.shape == (4, 9, 9)
    assert torch.all(mask[0] == 0)  # the top-left window holds one region only
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    # Bottom-right window: rows/cols 0-1 of the window are one region, row/col 2 another.
    assert mask[3, 0, 1] == 0 and mask[3, 0, 2] == -100 and mask[3, 0, 6] == -100 and mask[3, 8, 8] == 0


# --------------------------------------------------------------- behaviour (Swin)


def _tiny_swin(**kwargs) -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(16, (2, 2), (2, 4), window_size=4, out_indices=(0, 1), **kwargs)


def test_swin_eval_is_deterministic_and_drop_path_is_identity() -> None:
    with_dp = _tiny_swin(drop_path_rate=0.5).eval()
    without_dp = _tiny_swin(drop_path_rate=0.0).eval()
    without_dp.load_state_dict(with_dp.state_dict())
    x = torch.randn(2, 3, 37, 50)  # not a multiple of the patch or of the window
    with torch.no_grad():
        a, b, c = with_dp(x), with_dp(x), without_dp(x)
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v) and torch.equal(u, w)
    assert [tuple(t.shape) for t in a] == [(2, 16, 10, 13), (2, 32, 5, 7)]
    with_dp.train()
    torch.manual_seed(1)
    assert not torch.equal(with_dp(x)[1], a[1])  # drop path acts in training


def test_swin_fused_attention_equals_manual_and_batch_equals_single() -> None:
    fused = _tiny_swin(fused_attention=True).eval()
    manual = _tiny_swin(fused_attention=False).eval()
    manual.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        batched = fused(x)
        for u, v in zip(batched, manual(x)):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
        for i in range(2):
            for u, v in zip(fused(x[i : i + 1]), batched):
                torch.testing.assert_close(u, v[i : i + 1], atol=1e-5, rtol=1e-5)


def test_swin_inference_chunks_equal_one_pass(monkeypatch) -> None:
    """Without autograd a block attends over bands of window rows and runs its MLP over
    chunks of tokens (bounded temporaries); the maps equal the one-pass ones."""
    import glip.modeling.backbone.swin as swin

    model = _tiny_swin().eval()
    x = torch.randn(2, 3, 93, 130)  # stage 0: 24 x 33 tokens, padded to 6 x 9 windows of 4
    with torch.enable_grad():
        reference = [t.detach() for t in model(x)]  # with autograd: the one-pass path
    calls = []
    attn = model.layers[0].blocks[1].attn
    attn.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    # stage 0 (C = 16): one window row of 2 images
    monkeypatch.setattr(swin, "INFERENCE_CHUNK_ELEMENTS", 2 * 4 * 36 * 16)
    with torch.no_grad():
        chunked = model(x)
    assert calls == [2 * 9] * 6  # 6 bands of one window row (9 windows per image)
    for u, v in zip(chunked, reference):
        torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-6)


def test_swin_inference_chunks_shrink_with_the_stage_width(monkeypatch) -> None:
    """A chunk holds the same number of elements at every stage: a stage twice as wide runs
    bands of half as many tokens (stage 2 of GLIP-T no longer attends over its whole grid at
    once), with the same maps."""
    import glip.modeling.backbone.swin as swin

    model = _tiny_swin().eval()
    x = torch.randn(2, 3, 93, 130)  # stage 0: 24 x 33 tokens (6 x 9 windows); stage 1: 12 x 17 (3 x 5)
    with torch.enable_grad():
        reference = [t.detach() for t in model(x)]
    calls: dict[int, list[int]] = {0: [], 1: []}
    for stage in (0, 1):
        attn = model.layers[stage].blocks[0].attn
        attn.register_forward_hook(lambda mod, args, out, s=stage: calls[s].append(args[0].shape[0]))
    # 576 tokens of C = 16 at stage 0 (two window rows of 2 images), 288 of C = 32 at stage 1
    monkeypatch.setattr(swin, "INFERENCE_CHUNK_ELEMENTS", 576 * 16)
    with torch.no_grad():
        chunked = model(x)
    assert calls == {0: [2 * 18] * 3, 1: [2 * 5] * 3}  # a fixed token count would run stage 1 in one call
    for u, v in zip(chunked, reference):
        torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-6)


def test_swin_frozen_stages_and_checkpointing() -> None:
    model = _tiny_swin(frozen_stages=2, drop_path_rate=0.3, use_checkpoint=True)
    model.train()
    assert all(not p.requires_grad for p in model.patch_embed.parameters())
    assert all(not p.requires_grad for p in model.layers[0].parameters())
    assert all(p.requires_grad for p in model.layers[1].parameters())
    assert not model.layers[0].training and model.layers[1].training
    # Official rule: only stages with index >= frozen_stages are checkpointed.
    assert [stage.use_checkpoint for stage in model.layers] == [False, False]
    assert [stage.use_checkpoint for stage in _tiny_swin(frozen_stages=1, use_checkpoint=True).layers] == [False, True]

    plain = _tiny_swin(use_checkpoint=False)
    checkpointed = _tiny_swin(use_checkpoint=True)
    assert all(stage.use_checkpoint for stage in checkpointed.layers)
    x = torch.randn(1, 3, 32, 32)
    grads = []
    for m in (plain, checkpointed):
        sum(t.square().sum() for t in m.eval()(x)).backward()
        grads.append([p.grad for p in m.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


# ------------------------------------------------------------------------- FPN


def test_fpn_shapes_and_p6_source() -> None:
    feats = [torch.randn(1, 8, 25, 38), torch.randn(1, 16, 13, 19), torch.randn(1, 32, 7, 10)]
    on_p5 = FPN((8, 16, 32), 12)
    on_c5 = FPN((8, 16, 32), 12, p6_from_c5=True)
    assert on_p5.p6.in_channels == 12 and on_c5.p6.in_channels == 32
    for fpn in (on_p5, on_c5):
        out = fpn.eval()(feats)
        assert [tuple(t.shape[-2:]) for t in out] == [(25, 38), (13, 19), (7, 10), (4, 5), (2, 3)]
        assert all(t.shape[:2] == (1, 12) for t in out)
    names = {k.rsplit(".", 1)[0] for k in on_p5.state_dict()}
    assert names == {"lateral_convs.0", "lateral_convs.1", "lateral_convs.2", "output_convs.0", "output_convs.1",
                     "output_convs.2", "p6", "p7"}  # fmt: skip


def test_fpn_drop_block_only_in_training() -> None:
    torch.manual_seed(0)
    model = build_swin(16, (2, 2, 2, 2), (2, 2, 4, 4), 4, out_channels=16, fpn_drop_prob=0.3)
    plain = build_swin(16, (2, 2, 2, 2), (2, 2, 4, 4), 4, out_channels=16, fpn_drop_prob=0.0)
    assert model.fpn.drop_block is not None and plain.fpn.drop_block is None
    plain.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for u, v in zip(model.eval()(x), plain.eval()(x)):
            assert torch.equal(u, v)
        model.train()
        model.body.eval()  # isolate the FPN: no drop path in the body
        assert not torch.equal(model(x)[0], plain(x)[0])


# ---------------------------------------------------------------------- ResNet


def test_resnet50_shapes_keys_and_freezing() -> None:
    torch.manual_seed(0)
    body = ResNet(50, out_indices=(0, 1, 2, 3), freeze_at=2)
    keys = set(body.state_dict())
    for key in [
        "stem.conv1.weight", "stem.bn1.weight", "stem.bn1.bias", "stem.bn1.running_mean", "stem.bn1.running_var",
        "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var", "layer1.0.conv1.weight",
        "layer1.2.bn3.bias", "layer2.3.conv2.weight", "layer3.5.conv3.weight", "layer4.0.downsample.0.weight",
        "layer4.2.bn3.running_mean",
    ]:  # fmt: skip
        assert key in keys, key
    assert "layer1.1.downsample.0.weight" not in keys and "layer4.3.conv1.weight" not in keys
    assert not any("num_batches_tracked" in k for k in keys)
    assert sum(1 for k in keys if k.endswith("conv1.weight")) == 1 + 16  # stem + one per block
    # Frozen BN: no parameters besides the convs.
    assert all(name.endswith("weight") and p.ndim == 4 for name, p in body.named_parameters())
    # freeze_at=2: the stem and layer1 are frozen, the rest trains.
    assert not any(p.requires_grad for p in body.stem.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    # STRIDE_IN_1X1: the stride sits in the first 1x1 conv of each stage's first block.
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)
    assert ResNet(50, stride_in_1x1=False).layer2[0].conv2.stride == (2, 2)

    with torch.no_grad():
        outs = body.eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(t.shape) for t in outs] == [(1, 256, 16, 24), (1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]


def test_resnet_backbone_builders() -> None:
    with torch.device("meta"):
        r101 = build_resnet(101)
        r50_on_p5 = build_resnet(50, p6_from_c5=False)
    assert len(r101.body.layer3) == 23 and isinstance(r101, VisionBackbone)
    assert r101.fpn.in_channels == (512, 1024, 2048) and r101.fpn.p6.in_channels == 2048
    assert r50_on_p5.fpn.p6.in_channels == 256
    model = build_resnet(50, out_channels=32).eval()
    with torch.no_grad():
        levels = model(torch.randn(1, 3, 64, 64))
    assert [tuple(t.shape) for t in levels] == [
        (1, 32, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
        (1, 32, 1, 1),
        (1, 32, 1, 1),
    ]


@pytest.mark.parametrize("h,w,shift", [(24, 33, 2), (5, 3, 2), (2, 6, 3), (8, 8, 0)])
def test_add_unshifted_equals_rolling_back_and_cropping(h, w, shift) -> None:
    from glip.modeling.backbone.swin import add_unshifted

    x = torch.randn(2, h, w, 5)
    y = torch.randn(2, h + (-h) % 4 + 4 * (shift > 2), w + (-w) % 4, 5)  # padded (and larger) grids
    expected = x + torch.roll(y, shifts=(shift, shift), dims=(1, 2))[:, :h, :w]
    assert torch.equal(add_unshifted(x, y, shift), expected)


def test_swin_inference_frees_each_stage_input_and_output_once_used() -> None:
    """At inference no frame holds a stage's input while its later blocks run, nor a stage's
    raw output during the next stage (GLIP-T: 22 and 33 MiB at stages 1 and 2)."""
    import gc
    import weakref

    model = _tiny_swin().eval()
    refs: dict[str, weakref.ref] = {}
    alive: dict[str, bool] = {}
    model.patch_embed.register_forward_hook(lambda m, a, out: refs.__setitem__("embedded", weakref.ref(out[0])))
    model.layers[0].blocks[1].register_forward_hook(lambda m, a, out: refs.__setitem__("stage0", weakref.ref(out)))
    model.layers[0].downsample.register_forward_hook(lambda m, a, out: refs.__setitem__("merged", weakref.ref(out)))

    def check(names: tuple[str, ...]):
        def hook(module, args):
            gc.collect()
            alive.update({n: refs[n]() is not None for n in names})

        return hook

    model.layers[0].blocks[1].register_forward_pre_hook(check(("embedded",)))
    model.layers[1].blocks[1].register_forward_pre_hook(check(("stage0", "merged")))
    x = torch.randn(1, 3, 93, 130)
    with torch.no_grad():
        outputs = model(x)
    assert alive == {"embedded": False, "stage0": False, "merged": False}
    with torch.enable_grad():
        reference = model(x)
    assert all(torch.equal(u, v.detach()) for u, v in zip(outputs, reference))
