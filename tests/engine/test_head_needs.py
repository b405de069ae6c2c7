"""The training loop reads the heads' declared needs and never branches on a task."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import glip.engine.trainer as trainer_module
from glip.data import GroundingBatch
from glip.engine.head_needs import causal_head, causal_losses, is_empty_image
from glip.engine.loss_model import LossModel
from glip.modeling.build import HEADS
from glip.modeling.criterion import Criterion
from glip.modeling.heads import Head, LossInputs, MaskedTokens
from glip.structures import ImageBatch
from glip.structures.targets import GroundingTargets


def test_trainer_has_no_task_branches() -> None:
    """No head name, sample kind or task-specific target field appears in trainer.py."""
    tree = ast.parse(inspect.getsource(trainer_module))
    tasks = {e.name for e in HEADS} | {"captioning", "caption", "answer_scores", "vqa", "VQA", "CAPTION", "MASK"}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not strings & tasks, strings & tasks
    assert not names & tasks, names & tasks
    assert not any("caption" in n.lower() or "vqa" in n.lower() for n in names)


class _PoemOutput(SimpleNamespace):
    pass


class _PoemHead(Head):
    """A new causal head: trains alone on "poem" samples (no trainer edit)."""

    needs_causal_text = True
    batch_kind = "poem"

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, trunk: Any, outputs: Mapping[str, Any]) -> Any:
        return _PoemOutput(causal=trunk.causal)

    def corrupt(self, input_ids: Tensor, attention_mask: Tensor, generators: Sequence[torch.Generator]) -> MaskedTokens:
        draws = torch.stack([torch.randint(0, 1000, (1,), generator=g) for g in generators])  # [B, 1]
        labels = torch.full_like(input_ids, -100)
        labels[:, :1] = draws
        return MaskedTokens(input_ids=input_ids + 1, labels=labels)

    def loss(self, output: Any, inputs: LossInputs) -> dict[str, Tensor]:
        assert output.causal and inputs.assigned is None
        return {"loss_poem": self.scale * inputs.token_labels[:, 0].float().mean()}


class _AnswerHead(Head):
    extra_inputs = ("answer_scores",)

    def forward(self, trunk: Any, outputs: Mapping[str, Any]) -> Any:
        return None


class _StubModel(nn.Module):
    """Records how the loop runs it."""

    def __init__(self, heads: dict[str, Head]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)
        self.calls: list[dict] = []

    def forward(self, images, input_ids, attention_mask, heads=None, causal=False):
        self.calls.append({"ids": input_ids, "heads": heads, "causal": causal})
        trunk = SimpleNamespace(causal=causal)
        ran = heads if heads is not None else list(self.heads)
        return SimpleNamespace(trunk=trunk, anchors=[], heads={n: self.heads[n](trunk, {}) for n in ran})


def _batch(kinds: list[str], boxes: int = 0) -> GroundingBatch:
    b, t = len(kinds), 6
    targets = [GroundingTargets(torch.zeros(boxes, 4), torch.zeros(boxes, t, dtype=torch.bool)) for _ in kinds]
    return GroundingBatch(
        ImageBatch.from_tensors([torch.zeros(3, 8, 8)] * b), torch.ones(b, t, dtype=torch.int64),
        torch.ones(b, t, dtype=torch.int64), targets, [""] * b, list(range(b)), kinds=kinds, indices=list(range(b)),
    )  # fmt: skip


def test_a_new_causal_head_trains_alone_on_its_batches_without_a_trainer_edit() -> None:
    model = _StubModel({"poem": _PoemHead(), "answer": _AnswerHead()})
    loss_model = LossModel(model, Criterion(None, {"poem": 0.5}), seed=3)  # type: ignore[arg-type]
    losses = loss_model(_batch(["poem", "poem"]), step=4)
    (call,) = model.calls
    assert call["heads"] == ("poem",) and call["causal"] and bool((call["ids"] == 2).all())  # corrupted ids
    assert list(losses) == ["loss_poem"]
    again = causal_losses(model, Criterion(None, {}), "poem", _batch(["poem", "poem"]), 3, 4)  # type: ignore[arg-type]
    # same seeds -> same draws; the criterion's weight 0.5 applied
    torch.testing.assert_close(losses["loss_poem"], again["loss_poem"] * 0.5)
    other = causal_losses(model, Criterion(None, {}), "poem", _batch(["poem", "poem"]), 3, 5)  # type: ignore[arg-type]
    assert not torch.equal(other["loss_poem"], again["loss_poem"])  # another step, other draws


def test_causal_head_reads_the_batch_kind() -> None:
    heads = {"poem": _PoemHead(), "answer": _AnswerHead()}
    assert causal_head(heads, ["poem", "poem"]) == "poem"
    assert causal_head(heads, ["detection", "grounding"]) is None
    assert causal_head({"answer": _AnswerHead()}, ["poem"]) is None
    with pytest.raises(ValueError, match="mixes poem samples with other kinds"):
        causal_head(heads, ["poem", "detection"])
    with pytest.raises(ValueError, match="dataset index"):
        batch = _batch(["poem"])
        batch.indices = [-1]
        causal_losses(_StubModel(heads), Criterion(None, {}), "poem", batch, 0, 0)  # type: ignore[arg-type]


def test_an_image_is_empty_unless_a_head_learns_from_it() -> None:
    t = 6
    no_box = GroundingTargets(torch.zeros(0, 4), torch.zeros(0, t, dtype=torch.bool))
    answered = GroundingTargets(torch.zeros(0, 4), torch.zeros(0, t, dtype=torch.bool), answer_scores=torch.ones(2))
    boxed = GroundingTargets(torch.zeros(1, 4), torch.zeros(1, t, dtype=torch.bool))
    with_answers = {"answer": _AnswerHead()}
    assert is_empty_image(no_box, with_answers) and not is_empty_image(boxed, with_answers)
    assert not is_empty_image(answered, with_answers)
    assert is_empty_image(answered, {"poem": _PoemHead()})  # no head reads answers


def test_captioning_data_needs_a_caption_head() -> None:
    from glip.config import GLIPConfig
    from glip.engine.data import build_dataset

    cfg = GLIPConfig()
    cfg.data.format = "captions"
    with pytest.raises(ValueError, match="needs a caption head: set model.heads.caption.enabled"):
        build_dataset(cfg, tokenizer=None)
