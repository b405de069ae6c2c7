"""The answer head: the slot it reads, its BCE against soft scores, the batches it skips,
and its builder (off by default, a normalised vocabulary required)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glip.config import GLIPConfig
from glip.modeling.build import HEAD_BUILDERS
from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import LossInputs
from glip.modeling.heads.vqa import VQAHead, answer_slot, vqa_loss
from glip.structures import TextFeatures
from glip.structures.targets import GroundingTargets


def _trunk(text: torch.Tensor, mask: torch.Tensor) -> TrunkOutput:
    feats = TextFeatures(hidden=text, embedded=text, mask=mask, aggregate=text.mean(1))
    return TrunkOutput(visual=[], text=text, features=[], text_input=feats)


def test_vqa_loss_is_bce_summed_over_answers_averaged_over_questions() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    scores = torch.tensor([[1.0, 0.0, 1 / 3], [0.0, 2 / 3, 0.0]])
    p = logits.sigmoid()
    manual = -(scores * p.log() + (1 - scores) * (1 - p).log()).sum() / 2
    assert torch.allclose(vqa_loss(logits, scores), manual)
    assert vqa_loss(logits[:0], scores[:0]).item() == 0.0


def test_head_reads_the_slot_before_sep_and_skips_images_without_a_question() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert answer_slot(mask).tolist() == [2, 4]
    text = torch.randn(2, 6, 8)
    head = VQAHead(8, ["yes", "no", "2"])
    out = head(_trunk(text, mask), {})
    expected = head.classifier(torch.stack([text[0, 2], text[1, 4]]))
    assert torch.allclose(out.logits, expected) and out.logits.shape == (2, 3)
    scores = torch.tensor([0.0, 1.0, 0.0])
    targets = [GroundingTargets.empty(6), GroundingTargets.empty(6)]
    targets[1].answer_scores = scores
    inputs = LossInputs(targets=targets, anchors=[], text_mask=mask, assigned=None, num_pos_avg=1.0)
    loss = head.loss(out, inputs)["loss_vqa"]
    assert torch.allclose(loss, vqa_loss(out.logits[1:], scores[None]))
    targets[1].answer_scores = None  # no question in the batch: a zero on the graph
    zero = head.loss(out, inputs)["loss_vqa"]
    assert zero.item() == 0.0 and zero.requires_grad
    targets[0].answer_scores = torch.zeros(5)
    with pytest.raises(ValueError, match="5 answers but the head has 3"):
        head.loss(out, inputs)
    assert head.decode(out)[0][0] in ("yes", "no", "2")


def test_builder_off_by_default_and_checks_the_vocabulary() -> None:
    bert = SimpleNamespace(layer_norm_eps=1e-12)
    cfg = GLIPConfig()
    assert HEAD_BUILDERS["vqa"](cfg, bert) is None
    cfg.model.heads.vqa.enabled = True
    with pytest.raises(ValueError, match="answers is empty"):
        HEAD_BUILDERS["vqa"](cfg, bert)
    cfg.model.heads.vqa.answers = ["red", "True"]  # what YAML makes of an unquoted yes
    with pytest.raises(ValueError, match="boolean"):
        HEAD_BUILDERS["vqa"](cfg, bert)
    cfg.model.heads.vqa.answers = ["red", "yes"]
    cfg.model.heads.vqa.mlp_dim = 16
    head = HEAD_BUILDERS["vqa"](cfg, bert)
    assert head.answers == ("red", "yes") and head.classifier.dense.out_features == 16
    assert head.fresh_start and not head.training_only


def test_heads_register_in_the_order_they_run() -> None:
    """The detection heads first, then the language heads of glip.modeling.build_language
    (imported at the end of glip.modeling.build)."""
    assert list(HEAD_BUILDERS) == [
        "grounding",
        "mdetr_token",
        "mdetr_align",
        "mask",
        "mlm",
        "inter_image",
        "vqa",
        "caption",
    ]


def test_the_encoder_text_source_reads_the_slot_before_the_fusion() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    fused, encoded = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    feats = TextFeatures(hidden=encoded, embedded=encoded, mask=mask, aggregate=encoded.mean(1))
    trunk = TrunkOutput(visual=[], text=fused, features=[], text_input=feats)
    head = VQAHead(8, ["yes", "no"], text_source="encoder")
    assert torch.allclose(head(trunk, {}).logits, head.classifier(encoded[:, 2]))
    head.text_source = "fused"
    assert torch.allclose(head(trunk, {}).logits, head.classifier(fused[:, 2]))
    with pytest.raises(ValueError, match="text_source"):
        VQAHead(8, ["yes"], text_source="both")
