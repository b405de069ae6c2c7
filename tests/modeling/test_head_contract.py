"""The head contract: every head of the ordered table implements one interface and
declares what it needs; builders take the tokenizer's ids; the trunk comes from a spec."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from types import SimpleNamespace

import pytest
import torch

from glip.config import load_config
from glip.modeling.build import HEAD_BUILDERS, HEADS, build_heads, build_trunk
from glip.modeling.fusion.trunk import FusionTrunk, TrunkSpec
from glip.modeling.heads import Head, HeadUnavailableError, LossInputs, TokenIds, require_head
from glip.modeling.heads.caption import CaptionHead, CaptionOutput
from glip.modeling.heads.require import CaptionUnavailableError, MasksUnavailableError, VQAUnavailableError
from glip.modeling.heads.vqa import VQAHead, VQAOutput, VQAPrediction
from glip.structures.targets import GroundingTargets
from tests.golden.case import _TINY_BERT, CONFIG_FILE

# Heads whose outputs only feed training losses although they run at inference too
# (official: the MDETR branches are auxiliary losses): no postprocess.
_LOSS_ONLY = {"mdetr_token", "mdetr_align"}
_TARGET_FIELDS = {f.name for f in dataclasses.fields(GroundingTargets)}


def _all_heads_config():
    return load_config(
        CONFIG_FILE,
        [f"model.heads.{n}.enabled=true" for n in ("mdetr_token", "mdetr_align", "mask", "mlm", "inter_image",
                                                   "vqa", "caption")]
        + ["model.heads.vqa.answers=[red, blue]"],
    )  # fmt: skip


def _bert():
    from transformers import BertConfig

    return BertConfig(**_TINY_BERT)


@pytest.mark.parametrize("entry", HEADS, ids=[e.name for e in HEADS])
def test_every_head_implements_the_interface_and_declares_its_needs(entry) -> None:
    kind = entry.kind
    assert issubclass(kind, Head)
    assert kind.forward is not Head.forward and kind.loss is not Head.loss, entry.name
    if not (kind.training_only or entry.name in _LOSS_ONLY):
        assert kind.postprocess is not Head.postprocess, f"{entry.name} decodes its output with postprocess"
        returned = inspect.signature(kind.postprocess).return_annotation
        assert isinstance(returned, str) and returned != "Any", f"{entry.name}.postprocess returns a dataclass"
    for flag in ("training_only", "needs_backbone", "needs_causal_text", "fresh_start"):
        assert isinstance(getattr(kind, flag), bool), (entry.name, flag)
    assert isinstance(kind.extra_inputs, tuple) and set(kind.extra_inputs) <= _TARGET_FIELDS, entry.name
    if kind.needs_causal_text:  # trains alone on its own batches: it says which, and masks them
        assert isinstance(kind.batch_kind, str) and kind.corrupt is not Head.corrupt, entry.name
    else:
        assert kind.batch_kind is None, entry.name


def test_the_table_builds_each_head_of_its_declared_class_in_order() -> None:
    assert list(HEAD_BUILDERS) == [e.name for e in HEADS]
    heads = build_heads(_all_heads_config(), _bert())
    assert list(heads) == [e.name for e in HEADS]
    for entry in HEADS:
        assert type(heads[entry.name]) is entry.kind, entry.name


def test_head_builders_are_not_registered_by_import_side_effects() -> None:
    """build_language only defines builders; the table in build imports them."""
    import glip.modeling.build_language as language

    tree = ast.parse(inspect.getsource(language))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "glip.modeling.build" not in imported
    assert not any(
        isinstance(d, ast.Call) for f in tree.body if isinstance(f, ast.FunctionDef) for d in f.decorator_list
    )


def test_builders_take_the_tokenizer_ids() -> None:
    cfg = _all_heads_config()
    heads = build_heads(cfg, _bert(), TokenIds(mask=7, cls=1, sep=2, pad=0))
    assert heads["mlm"].mask_token_id == 7 and heads["caption"].mask_token_id == 7
    heads = build_heads(cfg, _bert())  # no tokenizer: BERT's [MASK]
    assert heads["mlm"].mask_token_id == 103 and heads["caption"].mask_token_id == 103
    tok = SimpleNamespace(mask_token_id=5, cls_token_id=6, sep_token_id=None, pad_token_id=0)
    assert TokenIds.from_tokenizer(tok) == TokenIds(mask=5, cls=6, sep=None, pad=0)
    assert TokenIds.from_tokenizer(None) == TokenIds()


def test_require_head_raises_the_tasks_one_line_error() -> None:
    head = VQAHead(4, ["a", "b"])
    model = SimpleNamespace(heads={"vqa": head}, config=SimpleNamespace(name="tiny"))
    assert require_head(model, "vqa", VQAHead) is head
    for name, error in (("mask", MasksUnavailableError), ("caption", CaptionUnavailableError)):
        with pytest.raises(error, match=f"model 'tiny' has no {name} head") as info:
            require_head(model, name)
        assert "\n" not in str(info.value) and isinstance(info.value, HeadUnavailableError)
    with pytest.raises(VQAUnavailableError, match="no VQA head"):  # present but of the wrong class
        require_head(SimpleNamespace(heads={"vqa": torch.nn.Identity()}, config=None), "vqa", VQAHead)
    with pytest.raises(HeadUnavailableError, match="model.heads.mlm.enabled"):
        require_head(model, "mlm")


def test_vqa_postprocess_gives_the_top_answers() -> None:
    head = VQAHead(4, ["a", "b", "c"])
    logits = torch.tensor([[0.0, 2.0, -1.0], [3.0, -2.0, 1.0]])
    pred = head.postprocess(VQAOutput(logits=logits, slot=torch.tensor([3, 4])), topk=2)
    assert isinstance(pred, VQAPrediction)
    assert [[a for a, _ in row] for row in pred.top] == [["b", "a"], ["a", "c"]]
    assert pred.top[0][0][1] == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))
    assert pred.best == [row[0] for row in pred.top] == head.decode(VQAOutput(logits=logits, slot=pred.slot))
    assert len(head.postprocess(VQAOutput(logits=logits, slot=pred.slot), topk=9).top[0]) == 3


def test_caption_loss_is_the_heads_loss_on_causal_batches_only() -> None:
    torch.manual_seed(0)
    head = CaptionHead(hidden_dim=8, vocab_size=12, label_smoothing=0.1)
    hidden = torch.randn(2, 5, 8)
    labels = torch.full((2, 5), -100)
    labels[0, 2], labels[1, 1] = 4, 9
    inputs = LossInputs(targets=[], anchors=[], text_mask=torch.ones(2, 5), assigned=None, num_pos_avg=1.0,
                        token_labels=labels)  # fmt: skip
    causal = CaptionOutput(hidden=hidden, causal=True)
    losses = head.loss(causal, inputs)
    assert list(losses) == ["loss_caption"]
    assert torch.equal(losses["loss_caption"], head.caption_loss(causal, labels))
    assert head.loss(CaptionOutput(hidden=hidden, causal=False), inputs) == {}
    with pytest.raises(ValueError, match="token_labels"):
        head.loss(causal, dataclasses.replace(inputs, token_labels=None))
    scores = head.postprocess(causal, torch.tensor([1, 3]), banned=[0, 2])
    assert scores.log_probs.shape == (2, 12) and bool(torch.isinf(scores.log_probs[:, [0, 2]]).all())
    torch.testing.assert_close(scores.log_probs.exp().sum(dim=1), torch.ones(2))


def test_trunk_from_a_spec_equals_the_flat_arguments() -> None:
    flat = dict(fused_dot_product=False, use_dfconv=False, text_num_heads=2, text_intermediate_size=16,
                clamp_bertattn_min_for_underflow=False, fusion_embed_dim=32, fusion_num_heads=2, clamp_max_for_overflow=False)  # fmt: skip
    spec = TrunkSpec.from_flat(16, 16, 8, 2, **flat)
    assert spec.text_layer.num_heads == 2 and spec.text_layer.clamp_min_for_underflow is False
    assert spec.fusion.embed_dim == 32 and spec.fusion.clamp_max_for_overflow is False
    assert spec.text_layer.clamp_max_for_overflow and spec.fusion.clamp_min_for_underflow
    torch.manual_seed(0)
    a = FusionTrunk(spec).state_dict()
    torch.manual_seed(0)
    b = FusionTrunk(16, 16, 8, 2, **flat).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TypeError):
        FusionTrunk(spec, fused_dot_product=True)
    with pytest.raises(TypeError):
        TrunkSpec.from_flat(16, 16, 8, 2, text_bogus=1)


def test_build_trunk_maps_the_config_onto_the_spec() -> None:
    cfg = load_config(
        CONFIG_FILE, ["model.trunk.fusion_dropout=0.3", "model.trunk.clamp_bertattn_max_for_overflow=false"]
    )
    trunk = build_trunk(cfg, _bert())
    s = trunk.spec
    assert (s.in_channels, s.channels, s.text_dim, s.num_blocks) == (
        cfg.model.backbone.out_channels, cfg.model.trunk.channels, cfg.model.text.dim, cfg.model.trunk.num_blocks,
    )  # fmt: skip
    assert s.fusion.dropout == 0.3 and s.text_layer.clamp_max_for_overflow is False
    assert s.text_layer.num_heads == _TINY_BERT["num_attention_heads"]
    assert s.text_layer.intermediate_size == _TINY_BERT["intermediate_size"]
    assert len(trunk.blocks) == cfg.model.trunk.num_blocks
