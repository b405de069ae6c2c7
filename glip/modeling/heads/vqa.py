"""GLIPv2's answer head: a classifier over an answer vocabulary at the answer slot.

Not in the official code (only its data hook, ``question [MASK]`` with the answer's boxes
diverted to the [MASK] token, exists there). The design follows the paper: the prompt is
the question followed by a ``[MASK]`` answer slot; the fused text feature at the slot goes
through an MLP ``D -> 2D -> GELU -> LayerNorm -> A`` (A answers, 3129 for VQAv2) trained
with a binary cross-entropy against the soft scores ``min(1, annotators / 3)``. The answer's
boxes come from the grounding head: its data point them at the [MASK] token (the
divert-boxes rule, :func:`glip.data.vqa.divert_boxes`), so the boxes scored on that token
are the answer's.

Dimension letters: B prompts, T tokens, D text width, A answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import TEXT_SOURCES, Head, LossInputs
from glip.modeling.heads.counting import AnswerCounter, density_targets

__all__ = ["AnswerClassifier", "VQAHead", "VQAOutput", "VQAPrediction", "answer_slot", "vqa_loss"]


def answer_slot(mask: Tensor) -> Tensor:
    """``Tensor[B]`` int64: the answer slot of each ``[CLS] question [MASK] [SEP]`` prompt,
    the last real token before ``[SEP]`` (``mask``: ``Tensor[B, T]``, non-zero = real token).
    :func:`glip.text.vqa.tokenize_question` guarantees the slot is there."""
    length = (mask != 0).sum(dim=1)  # [B]
    return (length - 2).clamp(min=0)


class AnswerClassifier(nn.Module):
    """``Linear(D, H) -> GELU -> LayerNorm(H) -> Linear(H, A)``: answer logits from one
    feature (H = 2D by default, as the VQA heads of BERT-style models).

    ``forward(x)``: ``Tensor[..., D]`` -> ``Tensor[..., A]``.
    """

    def __init__(self, dim: int, num_answers: int, hidden_dim: int | None = None, layer_norm_eps: float = 1e-12):
        super().__init__()
        hidden = hidden_dim or 2 * dim
        self.dense = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.classifier = nn.Linear(hidden, num_answers)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.norm(F.gelu(self.dense(x))))


def vqa_loss(logits: Tensor, scores: Tensor) -> Tensor:
    """Binary cross-entropy with logits against soft scores, summed over the A answers and
    averaged over the B questions (the usual VQA convention: BCE mean x A).

    Args:
        logits (Tensor[B, A]): answer logits.
        scores (Tensor[B, A]): soft scores in [0, 1].

    Returns:
        Tensor[] float32 (half-precision logits are upcast: the sum over thousands of
        answers loses too much in fp16).
    """
    if logits.shape != scores.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and scores {tuple(scores.shape)} must both be [B, A]")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, scores.to(logits), reduction="sum") / logits.shape[0]


@dataclass
class VQAOutput:
    """The answer head's output.

    Attributes:
        logits: ``Tensor[B, A]``, each prompt's answer logits (sigmoid = score).
        slot: ``Tensor[B]`` int64, the answer slot's token index.
        density: ``Tensor[B, H, W]``, the counter's density of the answer's objects (its
            sum is their count); None without a counter.
    """

    logits: Tensor
    slot: Tensor
    density: Tensor | None = None


@dataclass
class VQAPrediction:
    """The answer head's decoding (:meth:`VQAHead.postprocess`).

    Attributes:
        top: per prompt, its ``k`` best ``(answer, score)`` pairs, best first (score: the
            sigmoid of the answer's logit).
        slot: ``Tensor[B]`` int64, the answer slot's token index (the grounding head's
            boxes scored on that token are the answer's).
    """

    top: list[list[tuple[str, float]]]
    slot: Tensor

    @property
    def best(self) -> list[tuple[str, float]]:
        """Each prompt's best answer and its score."""
        return [t[0] for t in self.top]


class VQAHead(Head):
    """The answer head on the trunk (``model.heads["vqa"]``, loss ``loss_vqa``).

    Reads the post-fusion text hidden states (``trunk.text``, before L2 normalisation; the
    text encoder's, ``trunk.text_input.embedded``, with ``text_source="encoder"``) at the
    answer slot; runs at inference too (answers come from it). It may start fresh from
    a checkpoint without it (fine-tuning a pre-trained model).

    Args:
        hidden_dim: D, the text width.
        answers: the answer vocabulary (normalised), A >= 1 answers; kept with the model
            (the builder takes it from ``model.heads.vqa.answers``, saved in the config).
        mlp_dim: the classifier's hidden width (default 2D).
        layer_norm_eps: the classifier's LayerNorm epsilon.
        readout: an optional :class:`~glip.modeling.heads.readout.VisualReadout` through
            which the slot feature reads the trunk's visual maps before the classifier
            (None: the fused slot feature alone).
        counter: an optional :class:`~glip.modeling.heads.counting.AnswerCounter`: a density
            map of the answer's objects whose count feature is added to the slot feature;
            trained by ``loss_count`` against the answer's boxes.
        counter_weight: the weight of ``loss_count``.
        text_source: ``"fused"``: the slot's post-fusion feature (GLIPv2); ``"encoder"``: its
            text encoder feature before the fusion (the head then sees the image through its
            read-out and counter only, and a retrained fusion leaves its input unchanged).

    Images whose targets have no ``answer_scores`` (non-VQA data in a mixed batch) are left
    out of the loss. Parameters: ``classifier.*`` (:class:`AnswerClassifier`), ``readout.*``,
    ``counter.*``.
    """

    fresh_start = True
    fresh_parts = ("counter",)  # a counter added to a trained head starts fresh
    extra_inputs = ("answer_scores",)  # a question trains the head without boxes

    def __init__(
        self,
        hidden_dim: int,
        answers: Sequence[str],
        mlp_dim: int | None = None,
        layer_norm_eps: float = 1e-12,
        readout: nn.Module | None = None,
        counter: AnswerCounter | None = None,
        counter_weight: float = 1.0,
        text_source: str = "fused",
    ) -> None:
        super().__init__()
        if not answers:
            raise ValueError("the VQA head needs at least one answer in its vocabulary")
        if text_source not in TEXT_SOURCES:
            raise ValueError(f"the VQA head's text_source must be 'fused' or 'encoder', got {text_source!r}")
        if len(set(answers)) != len(answers):
            raise ValueError("the VQA answer vocabulary has duplicates")
        self.answers = tuple(answers)
        self.classifier = AnswerClassifier(hidden_dim, len(self.answers), mlp_dim, layer_norm_eps)
        self.readout = readout
        self.counter = counter
        self.counter_weight = counter_weight
        self.text_source = text_source

    @property
    def num_answers(self) -> int:
        return len(self.answers)

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any]) -> VQAOutput:
        slot = answer_slot(trunk.mask)  # [B]
        text = trunk.text if self.text_source == "fused" else trunk.text_input.embedded  # [B, T, D]
        rows = torch.arange(text.shape[0], device=text.device)
        feature = text[rows, slot.to(text.device)]  # [B, D]
        if self.readout is not None:
            feature = self.readout(feature[:, None], trunk.visual)[:, 0]  # [B, 1, D] -> [B, D]
        density = None
        if self.counter is not None:
            counted, density = self.counter(feature, trunk.visual)  # [B, D], [B, H, W]
            feature = feature + counted
        return VQAOutput(logits=self.classifier(feature), slot=slot, density=density)

    def loss(self, output: VQAOutput, inputs: LossInputs) -> dict[str, Tensor]:
        rows = [b for b, t in enumerate(inputs.targets) if t.answer_scores is not None]
        if not rows:  # no question in the batch: a zero still connected to the graph
            return {"loss_vqa": output.logits.sum() * 0.0}
        scores = torch.stack([inputs.targets[b].answer_scores for b in rows])  # [B', A]
        if scores.shape[1] != self.num_answers:
            raise ValueError(
                f"the targets score {scores.shape[1]} answers but the head has {self.num_answers}: "
                "build the data with the model's answer vocabulary"
            )
        index = torch.tensor(rows, device=output.logits.device)
        losses = {"loss_vqa": vqa_loss(output.logits[index], scores.to(output.logits.device))}
        if output.density is not None:  # the head has a counter
            losses["loss_count"] = self.counter_weight * self._count_loss(output.density[index], rows, inputs)
        return losses

    def _count_loss(self, density: Tensor, rows: Sequence[int], inputs: LossInputs) -> Tensor:
        """Squared error of the density map against the answer boxes' Gaussians (summed over
        the grid) plus the absolute error of its sum, averaged over the questions."""
        anchors = inputs.anchors[self.counter.level]  # [H*W, 4] xyxy over the padded grid
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # [N, 2]
        flat = density.flatten(1).float()  # [B', N]
        if flat.shape[1] != centres.shape[0]:
            raise ValueError(f"the counter's map has {flat.shape[1]} cells, the anchors {centres.shape[0]}")
        target = density_targets([inputs.targets[b].boxes for b in rows], centres.float(), self.counter.stride)
        dense = ((flat - target) ** 2).sum(1)  # [B']
        total = (flat.sum(1) - target.sum(1)).abs()  # [B']
        return (dense + total).mean()

    @torch.no_grad()
    def postprocess(self, output: VQAOutput, topk: int = 1) -> VQAPrediction:
        """Each prompt's ``min(topk, A)`` best answers (at least one) with their scores."""
        probs = output.logits.float().sigmoid()  # [B, A]
        k = max(min(topk, probs.shape[1]), 1)
        scores, index = probs.topk(k, dim=1)  # [B, k]
        top = [
            [(self.answers[int(i)], float(sc)) for i, sc in zip(row_i, row_s)]
            for row_i, row_s in zip(index.tolist(), scores.tolist())
        ]
        return VQAPrediction(top=top, slot=output.slot)

    def decode(self, output: VQAOutput) -> list[tuple[str, float]]:
        """Deprecated: ``postprocess(output).best``."""
        return self.postprocess(output).best
