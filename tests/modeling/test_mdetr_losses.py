"""The optional MDETR-style heads: soft-token prediction (official USE_TOKEN_LOSS) and
contrastive alignment (official USE_CONTRASTIVE_ALIGN_LOSS), on the trunk next to the
grounding head."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from glip.config import config_from_dict
from glip.config.official import OfficialConfigError
from glip.hub.official_keys import official_key_to_glip
from glip.modeling.build import build_heads, build_loss, build_trunk
from glip.modeling.criterion import Criterion
from glip.modeling.fusion.trunk import FusionTrunk
from glip.modeling.heads import AlignOutput, GroundingHead, MDETRAlignHead, MDETRTokenHead, TokenOutput
from glip.modeling.heads.grounding.anchors import AnchorGenerator
from glip.modeling.heads.grounding.assigner import ATSSAssigner
from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.structures import GroundingTargets, TextFeatures
from tests.modeling.test_loss import _SIZES, _T, _synthetic_batch, _synthetic_targets

_MAX_QUERY_LEN = 20  # > _T: the loss uses the first T token columns


class _TinyModel(nn.Module):
    """A trunk and its heads (grounding first, then the MDETR heads switched on), created
    in the order of the official head's layers; ``forward`` -> every head's output."""

    def __init__(self, use_token_loss: bool, use_contrastive_align: bool, fused_dot_product: bool) -> None:
        super().__init__()
        self.trunk = FusionTrunk(
            16, 16, 8, 1, fused_dot_product=fused_dot_product, use_dfconv=False,
            text_num_heads=2, text_intermediate_size=16,
        )  # fmt: skip
        heads = {"grounding": GroundingHead(16, 8, num_classes=4)}
        if use_token_loss:
            heads["mdetr_token"] = MDETRTokenHead(16, _MAX_QUERY_LEN)
        if use_contrastive_align:
            heads["mdetr_align"] = MDETRAlignHead(16, 8, fused_dot_product=fused_dot_product)
        self.heads = nn.ModuleDict(heads)

    def forward(self, features: list[torch.Tensor], text: TextFeatures) -> dict:
        trunk, outputs = self.trunk(features, text), {}
        for name, head in self.heads.items():
            outputs[name] = head(trunk, outputs)
        return outputs


def _tiny_head(
    seed: int = 0, use_token_loss: bool = False, use_contrastive_align: bool = False, fused_dot_product: bool = True
) -> _TinyModel:
    torch.manual_seed(seed)
    return _TinyModel(use_token_loss, use_contrastive_align, fused_dot_product)


def _inputs(seed: int = 1) -> tuple[list[torch.Tensor], TextFeatures]:
    gen = torch.Generator().manual_seed(seed)
    features = [torch.randn((2, 16, h, w), generator=gen) for h, w in _SIZES]
    mask = torch.zeros((2, _T), dtype=torch.int64)
    mask[0, :8] = 1
    mask[1, :6] = 1
    hidden = torch.randn((2, _T, 8), generator=gen)
    text = TextFeatures(hidden=hidden, embedded=hidden * mask[..., None], mask=mask, aggregate=hidden.mean(1))
    return features, text


_NEW = ("heads.mdetr_token.", "heads.mdetr_align.")


def test_flags_off_adds_nothing_and_flags_on_keep_the_base_outputs() -> None:
    features, text = _inputs()
    base = _tiny_head().eval()
    full = _tiny_head(use_token_loss=True, use_contrastive_align=True, fused_dot_product=False).eval()
    plain = _tiny_head(fused_dot_product=False).eval()
    assert not any(k.startswith(_NEW) for k in base.state_dict())
    extra = set(full.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(_NEW) for k in extra)
    with torch.no_grad():
        out = base(features, text)
        a, b = plain(features, text)["grounding"], full(features, text)
    assert set(out) == {"grounding"}
    # The new heads are created after the base ones: same seed -> same base weights and outputs.
    g = b["grounding"]
    for x, y in zip(a.dot_product_logits + a.box_regression, g.dot_product_logits + g.box_regression):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for level, (h, w) in enumerate(_SIZES):
        assert b["mdetr_token"].logits[level].shape == (2, h * w, _MAX_QUERY_LEN)
        assert b["mdetr_align"].logits[level].shape == (2, h * w, _T)
    # Contrastive logits are cosine similarities / exp(log_scale) = cosines at log_scale 0.
    assert all(c.abs().max() <= 1 + 1e-5 for c in b["mdetr_align"].logits)
    # Soft-token bias at the focal prior.
    torch.testing.assert_close(full.heads.mdetr_token.logits.bias, torch.full((_MAX_QUERY_LEN,), -math.log(99.0)))
    # The contrastive head divides by the grounding head's temperature.
    with torch.no_grad():
        full.heads.grounding.log_scale.fill_(math.log(2.0))
        halved = full(features, text)["mdetr_align"].logits
    for x, y in zip(halved, b["mdetr_align"].logits):
        torch.testing.assert_close(x, y / 2)


def _direct_focal(x: torch.Tensor, t: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = torch.sigmoid(x.double())
    t = t.double()
    return -(alpha * t * (1 - p) ** gamma * p.log() + (1 - alpha) * (1 - t) * p**gamma * (1 - p).log())


def _direct_contrastive(s: torch.Tensor, pos: torch.Tensor) -> float:
    """MDETR contrastive loss written out with loops ([N, T] logits of one image)."""
    s = s.double()
    total = 0.0
    for a in range(s.shape[0]):
        if pos[a].any():
            total += -s[a][pos[a]].mean().item() + math.log(s[a].exp().sum().item())
    for t in range(s.shape[1]):
        if pos[:, t].any():
            total += -s[:, t][pos[:, t]].mean().item() + math.log(s[:, t].exp().sum().item())
    return total / 2


@pytest.mark.parametrize("empty_second", [False, True])
def test_losses_match_direct_formulas(empty_second: bool) -> None:
    head, anchors, mask = _synthetic_batch()
    gen = torch.Generator().manual_seed(5)
    token = TokenOutput([3 * torch.randn((2, h * w, _MAX_QUERY_LEN), generator=gen) for h, w in _SIZES])
    align = AlignOutput([2 * torch.randn((2, h * w, _T), generator=gen) for h, w in _SIZES])
    targets = _synthetic_targets(empty_second=empty_second)
    heads = {
        "grounding": GroundingHead(16, 8),
        "mdetr_token": MDETRTokenHead(16, _MAX_QUERY_LEN),
        "mdetr_align": MDETRAlignHead(16, 8),
    }
    outputs = {"grounding": head, "mdetr_token": token, "mdetr_align": align}
    criterion = Criterion(ATSSAssigner(BoxCoder()), {"grounding": 1.0, "mdetr_token": 0.5, "mdetr_align": 3.0})
    inputs = criterion.prepare(anchors, mask, targets)
    assigned = inputs.assigned
    losses = criterion.combine(heads, outputs, inputs)
    base = criterion.combine({"grounding": heads["grounding"]}, outputs, inputs)
    assert set(losses) == set(base) | {"loss_token", "loss_contrastive_align"}
    for k in base:  # the released objective is unchanged
        assert losses[k].item() == base[k].item()
    assert all(torch.isfinite(v) for v in losses.values())

    npos = max(assigned.num_positives, 1)
    tok = torch.cat(token.logits, dim=1)[..., :_T]
    attended = (mask > 0)[:, None, :].expand_as(tok)
    want_token = _direct_focal(tok[attended], assigned.tokens[attended]).sum().item() / npos * 0.5
    assert losses["loss_token"].item() == pytest.approx(want_token, rel=1e-5)

    sim = torch.cat(align.logits, dim=1)
    want_align = 0.0
    for i, target in enumerate(targets):
        pos = torch.zeros(sim.shape[1:], dtype=torch.bool)
        for a in torch.nonzero(assigned.positive[i]).flatten().tolist():
            pos[a] = assigned.tokens[i, a] > 0  # the matched box's phrase tokens
        want_align += _direct_contrastive(sim[i], pos)
        if len(target.boxes) == 0:
            assert not pos.any()
    assert losses["loss_contrastive_align"].item() == pytest.approx(want_align / npos * 3.0, rel=1e-5)


def test_backward_reaches_new_parameters_and_zero_box_images_work() -> None:
    head = _tiny_head(use_token_loss=True, use_contrastive_align=True, fused_dot_product=False).train()
    features, text = _inputs()
    criterion = Criterion(ATSSAssigner(BoxCoder()))
    anchors = AnchorGenerator()(_SIZES)

    def run(targets: list[GroundingTargets]) -> dict[str, torch.Tensor]:
        return criterion.combine(head.heads, head(features, text), criterion.prepare(anchors, text.mask, targets))

    losses = run(_synthetic_targets(empty_second=True))
    assert {"loss_token", "loss_contrastive_align"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        if name.startswith(_NEW) or name == "heads.grounding.log_scale":
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    no_boxes = [GroundingTargets(torch.zeros((0, 4)), torch.zeros((0, _T), dtype=torch.bool)) for _ in range(2)]
    head.zero_grad()
    losses = run(no_boxes)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_contrastive_align"].item() == 0.0
    assert losses["loss_token"].item() > 0  # [NoObj] targets still train the soft-token branch
    sum(losses.values()).backward()
    assert head.heads.mdetr_token.logits.weight.grad.abs().sum() > 0


def test_fused_text_feeds_the_contrastive_projection() -> None:
    head = _tiny_head(use_contrastive_align=True, fused_dot_product=True)
    assert head.heads.mdetr_align.text_proj.in_features == 8  # the text width
    features, text = _inputs()
    out = head(features, text)["mdetr_align"]
    assert out.logits[0].shape == (2, _SIZES[0][0] * _SIZES[0][1], _T)


_BERT = SimpleNamespace(
    num_attention_heads=2,
    intermediate_size=16,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)


def _official_tree(**fuse) -> dict:
    return {"MODEL": {"DYHEAD": {"CHANNELS": 256, "FUSE_CONFIG": fuse}}}


def test_official_keys_map_to_config_and_modules() -> None:
    cfg = config_from_dict(
        _official_tree(
            USE_TOKEN_LOSS=True,
            TOKEN_LOSS_WEIGHT=0.5,
            USE_CONTRASTIVE_ALIGN_LOSS=True,
            CONTRASTIVE_ALIGN_LOSS_WEIGHT=2.0,
            CONTRASTIVE_HIDDEN_DIM=32,
            JOINT_EMB_DROPOUT=0.2,
        )
    )
    token, align = cfg.model.heads.mdetr_token, cfg.model.heads.mdetr_align
    assert token.enabled and token.weight == 0.5
    assert align.enabled and align.weight == 2.0 and align.hidden_dim == 32 and align.dropout == 0.2
    loss = build_loss(cfg)
    assert {k: loss.weights[k] for k in ("grounding", "mdetr_token", "mdetr_align")} == {
        "grounding": 1.0, "mdetr_token": 0.5, "mdetr_align": 2.0
    }  # fmt: skip
    assert all(loss.weights[k] == 1.0 for k in set(loss.weights) - {"mdetr_token", "mdetr_align"})

    off = config_from_dict(_official_tree(USE_TOKEN_LOSS=False, USE_CONTRASTIVE_ALIGN_LOSS=False))
    assert not off.model.heads.mdetr_token.enabled and not off.model.heads.mdetr_align.enabled
    assert set(build_heads(off, _BERT)) == {"grounding"}

    # Official: resizer output (JOINT_EMB_SIZE) must match the projection input (CHANNELS).
    with pytest.raises(OfficialConfigError, match="JOINT_EMB_SIZE"):
        config_from_dict(_official_tree(USE_CONTRASTIVE_ALIGN_LOSS=True, JOINT_EMB_SIZE=128))

    # A small head built from the config holds every official name of the new layers.
    cfg.model.trunk.channels = 16
    cfg.model.trunk.num_blocks = 1
    cfg.model.trunk.use_dfconv = False
    cfg.model.trunk.fused_dot_product = False
    cfg.model.backbone.out_channels = 16
    cfg.model.text.dim = 8
    cfg.model.text.max_query_len = _MAX_QUERY_LEN
    heads = nn.ModuleDict(build_heads(cfg, _BERT))
    assert list(heads) == ["grounding", "mdetr_token", "mdetr_align"]
    shapes = {f"heads.{k}": tuple(v.shape) for k, v in heads.state_dict().items()}
    shapes.update({f"trunk.{k}": tuple(v.shape) for k, v in build_trunk(cfg, _BERT).state_dict().items()})
    official = {
        "rpn.head.token_logits.weight": (_MAX_QUERY_LEN, 16, 1, 1),
        "rpn.head.token_logits.bias": (_MAX_QUERY_LEN,),
        "rpn.head.contrastive_align_projection_image.weight": (32, 16, 1, 1),
        "rpn.head.contrastive_align_projection_image.bias": (32,),
        "rpn.head.contrastive_align_projection_text.weight": (32, 16),
        "rpn.head.contrastive_align_projection_text.bias": (32,),
        "rpn.resizer.fc.weight": (16, 8),
        "rpn.resizer.fc.bias": (16,),
        "rpn.resizer.layer_norm.weight": (16,),
        "rpn.resizer.layer_norm.bias": (16,),
    }
    for key, shape in official.items():
        assert shapes[official_key_to_glip(key, tower_period=3)] == shape, key
