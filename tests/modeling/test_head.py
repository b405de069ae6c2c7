"""The fused trunk and the grounding head (together the official VLDyHead): stage-by-stage
parity, checkpoint layout, invariances."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from glip.hub.official_keys import remap_official_state_dict
from glip.modeling.fusion.dyhead import _reinterpret_raw_buffer
from glip.modeling.fusion.trunk import FusionTrunk, TrunkOutput
from glip.modeling.heads import GroundingHead
from glip.modeling.language.text_layer import TextLayer
from glip.structures import HeadOutputs, TextFeatures
from tests.conftest import CASES, OFFICIAL, TINY_CONFIGS, load_case, official_state_dict

ATOL = RTOL = 1e-4
# Official DyConv branch numbering: DyConv.0 = from_coarser, .1 = same, .2 = from_finer.
_OFFICIAL_CONV_INDEX = {"from_coarser": 0, "same": 1, "from_finer": 2}


# Arguments of the grounding head (the rest, but channels and text_dim, go to the trunk).
_GROUNDING_ARGS = {"channels", "text_dim", "num_classes", "log_scale", "prior_prob", "clamp_dot_product"}
_SHARED_ARGS = {"channels", "text_dim"}


class GLIPHead(nn.Module):
    """The official VLDyHead as ours: the trunk and the grounding head, from one argument
    list. ``forward`` returns the grounding outputs with ``trunk`` the trunk's output."""

    def __init__(self, in_channels: int, channels: int, text_dim: int, num_blocks: int = 1, **kwargs) -> None:
        super().__init__()
        grounding = {k: v for k, v in kwargs.items() if k in _GROUNDING_ARGS}
        trunk = {k: v for k, v in kwargs.items() if k not in _GROUNDING_ARGS}
        self.trunk = FusionTrunk(in_channels, channels, text_dim, num_blocks, **trunk)
        self.grounding = GroundingHead(channels, text_dim, **grounding)
        self.early_fusion = self.trunk.early_fusion

    def forward(self, features: list[torch.Tensor], text: TextFeatures) -> tuple[TrunkOutput, HeadOutputs]:
        trunk = self.trunk(features, text)
        return trunk, self.grounding(trunk, {})


def _head_kwargs(config: str) -> dict:
    """VLDyHead arguments from a fixture's merged official config.yaml and bert_config.json."""
    model = yaml.safe_load((OFFICIAL / config / "config.yaml").read_text())["MODEL"]
    dyhead, fuse = model["DYHEAD"], model["DYHEAD"]["FUSE_CONFIG"]
    bert = json.loads((OFFICIAL / config / "bert_config.json").read_text())
    assert fuse["TYPE"] == "MHA-B" and fuse["USE_DOT_PRODUCT_TOKEN_LOSS"] and not fuse["USE_TOKEN_LOSS"]
    assert bert["hidden_size"] == model["LANGUAGE_BACKBONE"]["LANG_DIM"]
    return {
        "in_channels": model["BACKBONE"]["OUT_CHANNELS"],
        "channels": dyhead["CHANNELS"],
        "text_dim": model["LANGUAGE_BACKBONE"]["LANG_DIM"],
        "num_blocks": dyhead["NUM_CONVS"],
        "num_classes": dyhead["NUM_CLASSES"] - 1,
        "early_fusion": fuse["EARLY_FUSE_ON"],
        "fused_dot_product": fuse["USE_FUSED_FEATURES_DOT_PRODUCT"],
        "use_gn": dyhead["USE_GN"],
        "gn_groups": model["GROUP_NORM"]["NUM_GROUPS"],
        "use_dyrelu": dyhead["USE_DYRELU"],
        "use_dyfuse": dyhead["USE_DYFUSE"],
        "use_dfconv": dyhead["USE_DFCONV"],
        "log_scale": dyhead["LOG_SCALE"],
        "prior_prob": dyhead["PRIOR_PROB"],
        "text_num_heads": bert["num_attention_heads"],
        "text_intermediate_size": bert["intermediate_size"],
        "text_activation": bert["hidden_act"],
        "text_layer_norm_eps": bert["layer_norm_eps"],
        "clamp_min_for_underflow": fuse["CLAMP_MIN_FOR_UNDERFLOW"],
        "clamp_max_for_overflow": fuse["CLAMP_MAX_FOR_OVERFLOW"],
        "clamp_bertattn_min_for_underflow": fuse["CLAMP_BERTATTN_MIN_FOR_UNDERFLOW"],
        "clamp_bertattn_max_for_overflow": fuse["CLAMP_BERTATTN_MAX_FOR_OVERFLOW"],
        "clamp_dot_product": fuse["CLAMP_DOT_PRODUCT"],
        "use_checkpoint": dyhead["USE_CHECKPOINT"],
    }


def _head_state_dict(config: str) -> dict[str, torch.Tensor]:
    remapped = remap_official_state_dict(official_state_dict(config))
    return {
        k.replace("heads.grounding.", "grounding.", 1): v
        for k, v in remapped.items()
        if k.startswith(("trunk.", "heads.grounding."))
    }


def _text(case: dict) -> TextFeatures:
    lang = case["language_backbone_out"]
    return TextFeatures(
        hidden=lang["hidden"],
        embedded=lang["embedded"],
        mask=lang["masks"],
        aggregate=lang["aggregate"],
    )


@dataclass
class _Trace:
    """Everything the hooks saw during one forward."""

    tower: list[tuple[str, list[torch.Tensor] | None, torch.Tensor | None]] = field(default_factory=list)
    offsets: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    conv_calls: list[tuple[int, list[int], torch.Tensor]] = field(default_factory=list)
    attn_calls: list[torch.Tensor] = field(default_factory=list)
    relu_inputs: list[torch.Tensor] = field(default_factory=list)
    proj_input: torch.Tensor | None = None
    proj_tokens: torch.Tensor | None = None


def _traced_forward(head: GLIPHead, case: dict) -> tuple[object, _Trace]:
    trace = _Trace()
    hooks = []  # lists are copied: the next block's fusion empties the list it is handed
    for i, block in enumerate(head.trunk.blocks):
        if block.fusion is not None:
            hooks.append(
                block.fusion.register_forward_hook(
                    lambda m, a, o: trace.tower.append(("fusion", list(o.visual), o.text))
                )
            )
        if block.text_layer is not None:
            hooks.append(
                block.text_layer.register_forward_hook(lambda m, a, o: trace.tower.append(("text_layer", None, o)))
            )
        hooks.append(block.dyconv.register_forward_hook(lambda m, a, o: trace.tower.append(("dyconv", list(o), None))))
        hooks.append(
            block.dyconv.offset.register_forward_hook(lambda m, a, o, i=i: trace.offsets.setdefault(i, []).append(o))
        )
    first = head.trunk.blocks[0].dyconv
    for name, index in _OFFICIAL_CONV_INDEX.items():
        hooks.append(
            getattr(first, name).register_forward_hook(
                lambda m, a, o, index=index: trace.conv_calls.append((index, list(a[0].shape), o.clone()))
            )
        )
    hooks.append(first.scale_attn.register_forward_hook(lambda m, a, o: trace.attn_calls.extend(F.relu(o).split(1))))
    # Copies: without autograd DyConv weights its branch maps in place and DyReLU overwrites its input.
    hooks.append(first.dyrelu.register_forward_pre_hook(lambda m, a: trace.relu_inputs.append(a[0].clone())))

    def on_proj(m, a, o):
        trace.proj_input, trace.proj_tokens = a[0], o

    hooks.append(head.grounding.text_proj.register_forward_hook(on_proj))
    try:
        with torch.no_grad():
            out = head(case["fpn_outputs"], _text(case))
    finally:
        for h in hooks:
            h.remove()
    return out, trace


@pytest.fixture(scope="module", params=TINY_CONFIGS)
def tiny_head(request) -> tuple[str, GLIPHead]:
    head = GLIPHead(**_head_kwargs(request.param)).eval()
    head.load_state_dict(_head_state_dict(request.param), strict=True)
    return request.param, head


@pytest.fixture(scope="module", params=CASES)
def traced(request, tiny_head):
    config, head = tiny_head
    case = load_case(config, request.param)
    out, trace = _traced_forward(head, case)
    return config, head, case, out, trace


def _close_all(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.needs_fixtures
def test_tower_matches_official(traced) -> None:
    _config, _, case, _, trace = traced
    ref = case["dyhead_tower"]
    expected_modules = {
        "fusion": "VLFuse",
        "text_layer": "BertEncoderLayer",
        "dyconv": "DyConv",
    }
    assert [expected_modules[name] for name, _, _ in trace.tower] == [r["module"] for r in ref]
    for (_name, visual, hidden), r in zip(trace.tower, ref):
        if visual is not None:
            _close_all(visual, r["visual"])
        if hidden is not None:
            torch.testing.assert_close(hidden, r["lang_hidden"], atol=ATOL, rtol=RTOL)


@pytest.mark.needs_fixtures
def test_dyconv_internals_match_official(traced) -> None:
    _config, head, case, _, trace = traced
    period = 3 if head.early_fusion else 1
    assert sorted(case["dyconv_offset_mask_raw"]) == [period * i + period - 1 for i in range(len(head.trunk.blocks))]
    for index, ref in case["dyconv_offset_mask_raw"].items():
        _close_all(trace.offsets[index // period], ref)

    assert case["first_dyconv_index"] == period - 1
    ref_calls = case["first_dyconv_conv_calls"]
    assert [(i, shape) for i, shape, _ in trace.conv_calls] == [(c["conv"], list(c["input_shape"])) for c in ref_calls]
    _close_all([o for _, _, o in trace.conv_calls], [c["output"] for c in ref_calls])
    _close_all(trace.attn_calls, case["first_dyconv_attnconv_calls"])
    _close_all(trace.relu_inputs, case["first_dyconv_relu_inputs"])


@pytest.mark.needs_fixtures
def test_head_outputs_match_official(traced) -> None:
    _, head, case, (trunk, out), trace = traced
    torch.testing.assert_close(
        trace.proj_input,
        case["dot_product_projection_text_input"],
        atol=ATOL,
        rtol=RTOL,
    )
    torch.testing.assert_close(trace.proj_tokens, case["dot_product_proj_tokens"], atol=ATOL, rtol=RTOL)
    _close_all(out.box_regression, case["head_bbox_reg"])
    _close_all(out.centerness, case["head_centerness"])
    _close_all(out.dot_product_logits, case["head_dot_product_logits"])
    assert out.num_classes == case["head_cls_logits"][0].shape[1] == 80
    assert (trunk.fused_text is not None) == head.early_fusion
    _close_all(trunk.visual, case["dyhead_tower"][-1]["visual"])
    _close_all(trunk.features, case["fpn_outputs"])  # the pre-fusion inputs are handed on


def test_raw_buffer_quirk_is_needed() -> None:
    """The official from_coarser conv reads level l's offsets as a flat buffer, not resized."""
    t = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    out = _reinterpret_raw_buffer(t, (2, 3))
    assert out.shape == (2, 3, 2, 3)
    for b in range(2):
        assert torch.equal(out[b].flatten(), t[b].flatten()[: 3 * 2 * 3])
    assert _reinterpret_raw_buffer(t, (4, 6)) is t
    with pytest.raises(ValueError):
        _reinterpret_raw_buffer(t, (5, 6))


# ------------------------------------------------------------- checkpoint layout

_FULL_SIZE = {
    # Official pretrain yamls: CHANNELS 256, NUM_CONVS 6 (T, A) / 8 (L); BERT-base in-head layers.
    "t": {"num_blocks": 6, "early_fusion": True, "fused_dot_product": True},
    "l": {"num_blocks": 8, "early_fusion": True, "fused_dot_product": True},
    "a": {"num_blocks": 6, "early_fusion": False, "fused_dot_product": False},
}


@pytest.mark.parametrize("model", sorted(_FULL_SIZE))
@pytest.mark.needs_fixtures
def test_full_size_keys_match_official(model: str) -> None:
    listing = json.loads((OFFICIAL / f"keys_glip_{model}.json").read_text())["keys"]
    official = {e["key"]: torch.empty(e["shape"], device="meta") for e in listing}
    expected = {
        k: tuple(v.shape) for k, v in remap_official_state_dict(official).items() if k.startswith(("trunk.", "heads."))
    }
    with torch.device("meta"):
        head = GLIPHead(
            256,
            256,
            768,
            text_num_heads=12,
            text_intermediate_size=3072,
            **_FULL_SIZE[model],
        )
    ours = {k.replace("grounding.", "heads.grounding.", 1): tuple(v.shape) for k, v in head.state_dict().items()}
    assert sorted(ours) == sorted(expected)
    assert ours == expected


# ------------------------------------------------------------- invariances


@pytest.mark.needs_fixtures
def test_batch_of_identical_images() -> None:
    config = "tiny_glip_t"
    head = GLIPHead(**_head_kwargs(config)).eval()
    head.load_state_dict(_head_state_dict(config), strict=True)
    case = load_case(config, "astronaut")
    text = _text(case)
    pair = TextFeatures(*(torch.cat([t, t]) for t in (text.hidden, text.embedded, text.mask, text.aggregate)))
    with torch.no_grad():
        _, single = head(case["fpn_outputs"], text)
        _, double = head([torch.cat([f, f]) for f in case["fpn_outputs"]], pair)
    for ours, ref in [
        (double.box_regression, single.box_regression),
        (double.centerness, single.centerness),
        (double.dot_product_logits, single.dot_product_logits),
    ]:
        for d, s in zip(ours, ref):
            torch.testing.assert_close(d[0], d[1], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(d[:1], s, atol=ATOL, rtol=RTOL)


def test_gradients_flow() -> None:
    torch.manual_seed(0)
    head = GLIPHead(
        32,
        32,
        8,
        num_blocks=2,
        num_classes=4,
        text_num_heads=2,
        text_intermediate_size=16,
        use_checkpoint=True,
    ).train()
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    features = [torch.randn(2, 32, h, w, requires_grad=True) for h, w in sizes]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    text = TextFeatures(
        hidden=hidden,
        embedded=hidden * mask[..., None],
        mask=mask,
        aggregate=hidden.mean(1),
    )
    _, out = head(features, text)
    loss = sum(t.square().mean() for t in out.box_regression + out.centerness + out.dot_product_logits)
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None and not n.startswith("grounding.cls_logits.")]
    assert not missing, missing
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features)
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    # cls_logits only sizes the score tensor: it never takes part in the forward.
    assert head.grounding.cls_logits.weight.grad is None
    assert head.grounding.untrained_names() == ["cls_logits.weight", "cls_logits.bias"]


def test_channel_mismatch_rules() -> None:
    with pytest.raises(ValueError):
        GLIPHead(48, 32, 8, num_blocks=1)
    head = GLIPHead(
        48,
        32,
        8,
        num_blocks=2,
        early_fusion=False,
        fused_dot_product=False,
        use_dfconv=False,
    ).eval()
    first, second = head.trunk.blocks[0].dyconv, head.trunk.blocks[1].dyconv
    assert first.dyrelu is None and first.scale_attn is None and first.offset is None
    assert second.dyrelu is not None and second.scale_attn is not None
    text = TextFeatures(
        torch.randn(1, 3, 8),
        torch.randn(1, 3, 8),
        torch.ones(1, 3, dtype=torch.long),
        torch.randn(1, 8),
    )
    with torch.no_grad():
        _, out = head([torch.randn(1, 48, 4 >> i or 1, 4 >> i or 1) for i in range(5)], text)
    assert [tuple(t.shape) for t in out.box_regression] == [
        (1, 4, 4, 4),
        (1, 4, 2, 2),
        (1, 4, 1, 1),
        (1, 4, 1, 1),
        (1, 4, 1, 1),
    ]


@pytest.mark.needs_fixtures
def test_text_layer_from_bert_config() -> None:
    bert = json.loads((OFFICIAL / "tiny_glip_t" / "bert_config.json").read_text())
    layer = TextLayer.from_bert_config(SimpleNamespace(**bert)).eval()
    head = GLIPHead(**_head_kwargs("tiny_glip_t")).eval()
    reference = head.trunk.blocks[0].text_layer
    layer.load_state_dict(reference.state_dict(), strict=True)
    hidden, mask = (
        torch.randn(2, 5, bert["hidden_size"]),
        torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    )
    with torch.no_grad():
        torch.testing.assert_close(layer(hidden, mask), reference(hidden, mask))


def test_fusion_width_from_config() -> None:
    """``model.trunk.fusion_embed_dim`` / ``fusion_num_heads`` set the fusion attention's size;
    the defaults are GLIP's fixed 2048 and 8."""
    from glip.config import GLIPConfig, config_from_dict
    from glip.modeling.build import build_trunk

    bert = SimpleNamespace(num_attention_heads=4, intermediate_size=64, hidden_act="gelu", layer_norm_eps=1e-12,
                           hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # fmt: skip
    small = ["model.trunk.channels=32", "model.backbone.out_channels=32", "model.trunk.num_blocks=1",
             "model.text.dim=64", "model.trunk.use_dfconv=false"]  # fmt: skip
    assert (GLIPConfig().model.trunk.fusion_embed_dim, GLIPConfig().model.trunk.fusion_num_heads) == (2048, 8)
    default = build_trunk(config_from_dict({}, small), bert).blocks[0].fusion.attn
    assert (default.embed_dim, default.num_heads) == (2048, 8)
    trunk = build_trunk(
        config_from_dict({}, [*small, "model.trunk.fusion_embed_dim=128", "model.trunk.fusion_num_heads=4"]), bert
    ).eval()
    attn = trunk.blocks[0].fusion.attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (128, 4, 32)
    assert attn.values_v_proj.weight.shape == (128, 32)
    features = [torch.randn(1, 32, 8, 8), torch.randn(1, 32, 4, 4)]
    text = TextFeatures(torch.randn(1, 5, 64), torch.randn(1, 5, 64), torch.ones(1, 5, dtype=torch.long), None)
    with torch.no_grad():
        out = trunk(features, text)
    assert out.visual[0].shape == (1, 32, 8, 8) and out.text.shape == (1, 5, 64)


@pytest.mark.parametrize("dyfuse", [True, False])
@pytest.mark.parametrize("k", [2, 3])
def test_dyconv_fuse_equals_the_stacked_mean_bitwise(dyfuse: bool, k: int) -> None:
    """The branch average is accumulated in place (no [K, B, C, H, W] temporaries) and equals
    the stack -> weight -> mean formula of the official DyConv bit for bit."""
    from glip.layers.dyrelu import h_sigmoid
    from glip.modeling.fusion.dyhead import DyConv

    torch.manual_seed(0)
    conv = DyConv(16, 16, gn_groups=4, use_dyfuse=dyfuse)
    branches = [torch.randn(2, 16, 9, 13) for _ in range(k)]
    stacked = torch.stack(branches)  # [K, B, C, H, W]
    if dyfuse:
        pooled = F.adaptive_avg_pool2d(stacked.flatten(0, 1), 1)
        attn = F.relu(conv.scale_attn(pooled)).view(k, 2, 1, 1, 1)
        expected = (stacked * h_sigmoid(attn)).mean(dim=0)
    else:
        expected = stacked.mean(dim=0)
    with torch.no_grad():
        assert torch.equal(conv._fuse(branches), expected.detach())


def test_dyconv_frees_the_branches_before_the_activation() -> None:
    """Each level's branch maps are gone by the time its DyReLU runs, but the first, which holds
    the fused sum (inference memory: at the finest level of an 800 x 1216 input, 2-3 maps of
    15.6 MiB fewer alive at once)."""
    import gc
    import weakref

    from glip.modeling.fusion.dyhead import DyConv

    torch.manual_seed(0)
    conv = DyConv(16, 16, gn_groups=4).eval()
    branches: list[weakref.ref] = []
    alive_at_activation: list[int] = []
    seen = [0]
    for branch in (conv.same, conv.from_finer, conv.from_coarser):
        branch.register_forward_hook(lambda m, a, out: branches.append(weakref.ref(out)))

    def count(module: nn.Module, args: tuple) -> None:
        # The hooks above send the branch calls through torch's hooked call path, whose closures
        # leave reference cycles for the collector; without the hooks nothing waits for it.
        gc.collect()
        # The first branch is the fused map itself (the others are summed into it in place).
        # This level's branches only: an earlier level's first branch is now its output.
        fused = args[0].untyped_storage().data_ptr()
        alive = [ref() for ref in branches[seen[0] :] if ref() is not None]
        seen[0] = len(branches)
        alive_at_activation.append(sum(t.untyped_storage().data_ptr() != fused for t in alive))

    conv.dyrelu.register_forward_pre_hook(count)
    with torch.no_grad():
        conv([torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)])
    assert len(branches) == 7 and alive_at_activation == [0, 0, 0]


def test_dyconv_keeps_one_finest_map_between_levels_and_equals_the_autograd_path() -> None:
    """Without autograd the branches are weighted and summed in place and DyReLU overwrites the
    fused map: when the next level's branches start, the finest level leaves one map of its size
    alive (its output; before, its fused map too). The outputs equal the autograd path's bit for bit."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    from glip.modeling.fusion.dyhead import DyConv

    torch.manual_seed(0)
    conv = DyConv(16, 16, gn_groups=4).eval()
    features = [torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)]
    finest = features[0].numel()

    class Track(TorchDispatchMode):
        """Weak references to every new finest-level-sized tensor."""

        def __init__(self) -> None:
            super().__init__()
            self.maps: list[weakref.ref] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == finest:
                self.maps.append(weakref.ref(out))
            return out

    alive: list[int] = []

    def count(module: nn.Module, args: tuple) -> None:
        ptrs = {ref().untyped_storage().data_ptr() for ref in track.maps if ref() is not None}
        alive.append(len(ptrs - {features[0].untyped_storage().data_ptr()}))

    conv.same.register_forward_pre_hook(count)
    with torch.no_grad(), Track() as track:
        outputs = conv(features)
    assert alive[1] == 1  # level 1 starts with level 0's output alone
    with torch.enable_grad():
        reference = conv(features)
    for u, v in zip(outputs, reference):
        assert torch.equal(u, v.detach())


def test_trunk_frees_a_blocks_input_maps_before_its_dyconv() -> None:
    """The trunk calls each block's halves apart (``fuse``, then ``dyconv``), so the previous
    block's output maps are gone when the next DyConv runs (one pyramid fewer alive at
    inference), and the output equals calling the blocks whole."""
    import gc
    import weakref

    from glip.config import config_from_dict
    from glip.modeling.build import build_trunk

    bert = SimpleNamespace(num_attention_heads=4, intermediate_size=64, hidden_act="gelu", layer_norm_eps=1e-12,
                           hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # fmt: skip
    small = ["model.trunk.channels=32", "model.backbone.out_channels=32", "model.trunk.num_blocks=2",
             "model.text.dim=64", "model.trunk.fusion_embed_dim=64", "model.trunk.fusion_num_heads=4"]  # fmt: skip
    torch.manual_seed(0)
    trunk = build_trunk(config_from_dict({}, small), bert).eval()
    features = [torch.randn(1, 32, 8, 8), torch.randn(1, 32, 4, 4)]
    text = TextFeatures(torch.randn(1, 5, 64), torch.randn(1, 5, 64), torch.ones(1, 5, dtype=torch.long), None)
    first_out: list[weakref.ref] = []
    alive: list[int] = []
    trunk.blocks[0].dyconv.register_forward_hook(lambda m, a, out: first_out.extend(weakref.ref(t) for t in out))

    def count(module: nn.Module, args: tuple) -> None:
        gc.collect()  # the hooks' closures leave cycles for the collector
        alive.append(sum(ref() is not None for ref in first_out))

    trunk.blocks[1].dyconv.register_forward_pre_hook(count)
    # ... and already while block 1 fuses: its norm runs after the maps are concatenated
    trunk.blocks[1].fusion.norm_v.register_forward_pre_hook(count)
    with torch.no_grad():
        out = trunk(features, text)
        visual, hidden = list(features), text.hidden
        for block in trunk.blocks:
            whole = block(visual, hidden, text.mask)
            visual, hidden = whole.visual, whole.text
    assert len(first_out) == 4 and alive[:2] == [0, 0]  # both levels of block 0's output freed
    assert all(torch.equal(a, b) for a, b in zip(out.visual, visual)) and torch.equal(out.text, hidden)
