"""Visual question answering on a loaded model: :func:`answer_questions` (behind
:meth:`glip.inference.Predictor.answer` and :func:`glip.answer`).

A model with GLIPv2's answer head (``model.heads.vqa``) reads ``question [MASK]``: the
head classifies the fused feature at the [MASK] slot over its answer vocabulary, and the
grounding head's boxes scored on the [MASK] token are the answer's boxes (grounded VQA:
the training data point the answer's boxes at that token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from glip.modeling.glip import GLIP, GROUNDING
from glip.modeling.heads.require import VQAUnavailableError, require_head
from glip.modeling.heads.vqa import VQAHead
from glip.utils.image import ImageInput

from .processor import Processor

__all__ = ["VQA", "Answer", "VQAUnavailableError", "answer_questions", "require_vqa"]

# The name of the answer head in ``GLIP.heads``.
VQA = "vqa"


@dataclass
class Answer:
    """A model's answer to one question about one image.

    Attributes:
        question: the question asked.
        answer: the best answer of the head's vocabulary.
        score: its probability (sigmoid of its logit), in [0, 1].
        boxes: ``Tensor[N, 4]`` float32 ``(x1, y1, x2, y2)`` in original-image pixels: the
            boxes the grounding head scores on the answer slot above ``box_threshold``,
            best first.
        box_scores: ``Tensor[N]``, their scores.
        phrases: N entries, each box's phrase (the answer).
        top: the ``topk`` best answers with their scores, best first.
    """

    question: str
    answer: str
    score: float
    boxes: Tensor = field(default_factory=lambda: torch.zeros((0, 4)))
    box_scores: Tensor = field(default_factory=lambda: torch.zeros((0,)))
    phrases: list[str] = field(default_factory=list)
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready fields (boxes as lists)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "score": self.score,
            "boxes": [[round(float(v), 2) for v in b] for b in self.boxes.tolist()],
            "box_scores": [round(float(s), 4) for s in self.box_scores.tolist()],
            "phrases": list(self.phrases),
            "top": [[a, s] for a, s in self.top],
        }


def require_vqa(model: GLIP) -> VQAHead:
    """The model's answer head; :class:`VQAUnavailableError` (one line naming the model)
    when it has none."""
    return require_head(model, VQA, VQAHead)


@torch.no_grad()
def answer_questions(
    model: GLIP,
    image: ImageInput,
    questions: Sequence[str],
    box_threshold: float = 0.3,
    topk: int = 5,
) -> list[Answer]:
    """Answers several questions about one image (the backbone runs once).

    Args:
        model: a GLIP with an answer head (else :class:`VQAUnavailableError`).
        image: a path, a PIL image or an ``[H, W, 3]`` uint8 RGB array.
        questions: the questions (each non-empty; too long a question raises
            :class:`glip.text.vqa.AnswerSlotError`).
        box_threshold: keep the answer boxes scoring above this.
        topk: answers listed in :attr:`Answer.top`.
    """
    head = require_vqa(model)
    if not 0.0 <= box_threshold <= 1.0:
        raise ValueError(f"box_threshold must be in [0, 1], got {box_threshold}")
    processor = Processor.of(model)
    encodings = [processor.tokenize_question(q) for q in questions]
    device = model.device
    tensor, original_size = processor(image)
    batch = processor.batch([tensor]).to(device)
    features = model.backbone(batch.tensor)
    results = []
    for question, encoding in zip(questions, encodings):
        ids = torch.tensor([encoding["input_ids"]], dtype=torch.int64, device=device)  # [1, T]
        mask = torch.ones_like(ids)  # [1, T]
        out = model.forward_features(features, ids, mask, use_prompt_offset=False, heads=(GROUNDING, VQA))
        vqa_out = out.heads[VQA]
        probs = vqa_out.logits.float().sigmoid()[0]  # [A]
        k = min(topk, probs.numel())
        best_scores, best = probs.topk(max(k, 1))
        top = [(head.answers[int(i)], float(s)) for i, s in zip(best.tolist(), best_scores.tolist())]
        slot = int(vqa_out.slot[0])
        positive_map = torch.zeros((1, ids.shape[1]), device=device)  # [1, T]: the answer slot
        positive_map[0, slot] = 1.0
        (det,) = model.grounding.postprocess(out.head, out.anchors, positive_map, batch.image_sizes, [original_size])
        det = det.to("cpu").above(box_threshold)
        results.append(
            Answer(
                question=question,
                answer=top[0][0],
                score=top[0][1],
                boxes=det.boxes,
                box_scores=det.scores,
                phrases=[top[0][0]] * len(det.scores),
                top=top[:k],
            )
        )
    return results
