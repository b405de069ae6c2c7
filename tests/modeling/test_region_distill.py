"""RegionCLIP-style region-concept distillation (glip.modeling.heads.grounding.region_distill): the
student's phrase logits against the official phrase score, a float64 reference of the KL,
zero when the student equals the teacher, gradients into the head, and off by default."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.criterion import Criterion
from glip.modeling.heads.grounding.assigner import ATSSAssigner
from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.modeling.heads.grounding.loss import GroundingLoss
from glip.modeling.heads.grounding.region_distill import RegionConceptDistillation, phrase_logits
from glip.structures import GroundingTargets
from tests.golden import case

_T = 10
# Three concepts: tokens 1-2, 4, 6-8 (a truncated fourth: no token).
_CONCEPTS = [[1, 2], [4], [6, 7, 8], []]


def _concept_map() -> torch.Tensor:
    m = torch.zeros((len(_CONCEPTS), _T), dtype=torch.bool)
    for k, tokens in enumerate(_CONCEPTS):
        m[k, tokens] = True
    return m  # [K, T]


def test_phrase_logits_are_the_logit_of_the_mean_token_probability() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(5, _T, generator=g, dtype=torch.float64)  # [A, T]
    cmap = _concept_map()[:3]
    got = phrase_logits(logits, cmap)  # [A, K]
    for k, tokens in enumerate(_CONCEPTS[:3]):
        expected = torch.logit(torch.sigmoid(logits[:, tokens]).mean(dim=1))
        torch.testing.assert_close(got[:, k], expected)
    # Stable where the probability rounds to 1 in float32: a one-token phrase gives its logit back.
    big = torch.tensor([[0.0, 0.0, 0.0, 0.0, 40.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert phrase_logits(big, cmap[1:2]).item() == 40.0
    with pytest.raises(ValueError, match=r"\[A, T\] and \[K, T\]"):
        phrase_logits(logits, cmap[:, :4])


def _assignment(boxes: list[tuple[float, float, float, float]], scores: torch.Tensor | None):
    """Two images on a 2-level grid (8x8 of stride 8, 4x4 of stride 16, 64x64 px)."""
    anchors = []
    for stride, size in ((8, 16.0), (16, 32.0)):
        n = 64 // stride
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        cx, cy = (xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride
        anchors.append(torch.stack([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], dim=1))
    pmap = torch.zeros((len(boxes), _T), dtype=torch.bool)
    for g in range(len(boxes)):
        pmap[g, _CONCEPTS[g]] = True
    scored = GroundingTargets(
        torch.tensor(boxes), pmap, concept_map=_concept_map() if scores is not None else None, concept_scores=scores
    )
    plain = GroundingTargets(torch.tensor([[4.0, 4.0, 30.0, 30.0]]), pmap[:1])  # no teacher scores
    targets = [scored, plain]
    criterion = Criterion(ATSSAssigner(BoxCoder()))
    return anchors, targets, criterion.assign(anchors, targets)


BOXES = [(2.0, 2.0, 30.0, 30.0), (30.0, 20.0, 60.0, 62.0)]
TEACHER = torch.tensor([[9.0, 2.0, -1.0, 5.0], [0.5, 1.0, 4.0, -3.0]])  # [G, K], K = 4 (the last truncated)


def test_kl_against_a_float64_reference_and_zero_when_the_student_equals_the_teacher() -> None:
    anchors, targets, assigned = _assignment(BOXES, TEACHER)
    num = sum(a.shape[0] for a in anchors)
    logits = torch.randn(2, num, _T, generator=torch.Generator().manual_seed(1))  # [B, N, T]
    for temperature in (1.0, 2.5):
        loss = RegionConceptDistillation(temperature)(logits, targets, assigned)
        # Reference: every positive anchor of image 0, its box's teacher row over the 3 kept concepts.
        rows = []
        matched = assigned.per_image[0].matched_gt
        for n in torch.nonzero(assigned.positive[0]).flatten().tolist():
            z = logits[0, n].double()
            student = torch.stack([torch.logit(torch.sigmoid(z[c]).mean()) for c in _CONCEPTS[:3]])
            p = torch.softmax(TEACHER[matched[n], :3].double() / temperature, dim=0)
            q = torch.softmax(student / temperature, dim=0)
            rows.append((p * (p.log() - q.log())).sum())
        assert len(rows) > 2
        expected = torch.stack(rows).mean() * temperature**2
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

        # The student's phrase logits equal to the teacher's scores: every token of concept k
        # of a positive anchor carries the teacher's score of k (the phrase logit is then exact).
        same = logits.clone()
        for n in torch.nonzero(assigned.positive[0]).flatten().tolist():
            for k, tokens in enumerate(_CONCEPTS[:3]):
                same[0, n, tokens] = TEACHER[matched[n], k]
        assert abs(RegionConceptDistillation(temperature)(same, targets, assigned).item()) < 1e-6


def test_nothing_to_distill_gives_a_connected_zero() -> None:
    anchors, targets, assigned = _assignment(BOXES, None)
    num = sum(a.shape[0] for a in anchors)
    logits = torch.randn(2, num, _T, requires_grad=True)
    loss = RegionConceptDistillation()(logits, targets, assigned)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and not logits.grad.any()
    with pytest.raises(ValueError, match="temperature must be positive"):
        RegionConceptDistillation(0.0)


def _golden(distill_weight: float):
    from transformers import BertConfig

    from glip.config import load_config
    from glip.modeling.build import build_loss, build_model
    from glip.structures import ImageBatch
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    overrides = [f"model.heads.grounding.distill_weight={distill_weight}"] if distill_weight else []
    cfg = load_config(case.CONFIG_FILE, overrides)
    model = build_model(cfg, BertConfig(**case._TINY_BERT), load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"]))
    case._fill_by_name(model)
    model.eval()  # the loss needs no training-mode forward (gradients flow all the same)
    tokens = model.tokenize(case.PROMPT)
    tensor, _ = model.preprocessing(case.golden_image())
    batch = ImageBatch.from_tensors([tensor], model.preprocessing.size_divisibility)
    return model, build_loss(cfg), tokens, batch


def _targets(tokens, scores: torch.Tensor | None) -> list[GroundingTargets]:
    rows = torch.tensor(case.TARGET_LABELS) - 1
    concepts = tokens.positive_map[:3] != 0  # the prompt's three phrases: the concept pool
    return [
        GroundingTargets(
            torch.tensor(case.TARGET_BOXES, dtype=torch.float32), tokens.positive_map[rows] != 0,
            torch.tensor(case.TARGET_LABELS), concept_map=None if scores is None else concepts, concept_scores=scores,
        )
    ]  # fmt: skip


def test_the_distillation_loss_trains_the_head_and_vanishes_at_the_teacher() -> None:
    torch.manual_seed(0)
    model, criterion, tokens, batch = _golden(distill_weight=0.5)
    teacher = torch.tensor([[8.0, 1.0, 0.0], [0.0, 6.0, 2.0], [1.0, 1.0, 7.0]])  # [G, K]: each box its phrase
    out = model(batch, tokens.input_ids, tokens.attention_mask)
    inputs = criterion.prepare(out.anchors, tokens.attention_mask, _targets(tokens, teacher))
    losses = criterion.combine(model.heads, out.heads, inputs)
    assert losses["loss_distill"].item() > 0
    head = model.heads["grounding"]
    # The head's alignment parameters and the trunk's maps (the levels holding positives) get
    # gradient, not the box branch.
    params = [head.text_proj.weight, head.log_scale, head.bias0, head.bias_lang, head.bbox_pred.weight]
    grads = torch.autograd.grad(losses["loss_distill"], [*params, *out.trunk.visual], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:4])
    assert grads[4] is None or not grads[4].any()
    assert any(g is not None and g.abs().sum() > 0 for g in grads[5:])

    # The teacher's scores set to the student's own phrase logits at one anchor per box: zero
    # (the forward has nothing random: its logits serve again).
    with torch.no_grad():
        logits = torch.cat(out.heads["grounding"].dot_product_logits, dim=1).detach()  # [1, N, T]
        assigned = inputs.assigned
        matched = assigned.per_image[0].matched_gt
        firsts = torch.stack([torch.nonzero(assigned.positive[0] & (matched == g)).flatten()[0] for g in range(3)])
        assigned.positive = torch.zeros_like(assigned.positive)
        assigned.positive[0, firsts] = True
        own = phrase_logits(logits[0, firsts], tokens.positive_map[:3] != 0)  # [G, K]
        assert abs(RegionConceptDistillation(2.0)(logits, _targets(tokens, own), assigned).item()) < 1e-6
        assert RegionConceptDistillation(2.0)(logits, _targets(tokens, teacher), assigned).item() > 0.01


def test_off_by_default_and_bad_settings_are_refused() -> None:
    model, criterion, tokens, batch = _golden(distill_weight=0.0)
    with torch.no_grad():
        out = model(batch, tokens.input_ids, tokens.attention_mask)
        losses = criterion(model.heads, out, tokens.attention_mask, _targets(tokens, torch.zeros(3, 3)))
    assert sorted(losses) == ["loss_centerness", "loss_dot_product_token", "loss_reg"]
    assert GroundingLoss().distill is None
    from glip.config import load_config
    from glip.modeling.build import _build_grounding

    cfg = load_config(
        case.CONFIG_FILE, ["model.heads.grounding.distill_weight=1", "model.heads.grounding.distill_temperature=0"]
    )
    with pytest.raises(ValueError, match="distill_temperature > 0"):
        _build_grounding(cfg, None)
