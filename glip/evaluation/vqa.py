"""The official VQA accuracy (VQA API ``vqaEval.py``), overall and per question / answer type.

For one question with annotators' answers ``g_1 .. g_n`` (n = 10 in VQAv2) and a predicted
answer ``r``::

    acc = mean over i of min(1, #{j != i : g_j == r} / 3)

i.e. ``min(#matches / 3, 1)`` averaged over the n leave-one-out subsets of n - 1 answers
(the 10-choose-9 subsets). As the official code: newlines and tabs become spaces and the
answers are stripped; the punctuation / number / article / contraction normalisation
(:func:`glip.text.vqa.normalize_answer`) is applied to the ground truth AND the
prediction only when the annotators disagree (``len(set(answers)) > 1``), so when all
agree the prediction must match their exact string. Questions of one record never share
their answers with another.

Scores here are fractions in [0, 1] (the official tables print 100 x, rounded to 2 digits).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glip.text.vqa import process_digit_article, process_punctuation

__all__ = ["VQAMetrics", "question_accuracy", "vqa_accuracy"]


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official accuracy of one predicted answer against the annotators' answers."""
    if not answers:
        raise ValueError("a question needs at least one ground-truth answer to be scored")
    truth = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(truth)) > 1:
        truth = [process_digit_article(process_punctuation(a)) for a in truth]
        pred = process_digit_article(process_punctuation(pred))
    scores = []
    for i in range(len(truth)):
        matches = sum(1 for j, a in enumerate(truth) if j != i and a == pred)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)


@dataclass
class VQAMetrics:
    """VQA accuracy of a set of predictions.

    Attributes:
        accuracy: the mean official accuracy over the scored questions, in [0, 1].
        per_question_type: mean accuracy per ``question_type`` (VQAv2: the question's first
            words, e.g. ``"what color is the"``).
        per_answer_type: mean accuracy per ``answer_type`` (``"yes/no"``, ``"number"``, ``"other"``).
        num_questions: questions scored.
        num_missing: ground-truth questions without a prediction (scored 0).
        per_question: question id -> accuracy.
    """

    accuracy: float
    per_question_type: dict[str, float] = field(default_factory=dict)
    per_answer_type: dict[str, float] = field(default_factory=dict)
    num_questions: int = 0
    num_missing: int = 0
    per_question: dict[Any, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The json of ``metrics.json`` (per-question scores left out)."""
        return {
            "accuracy": self.accuracy,
            "per_question_type": dict(self.per_question_type),
            "per_answer_type": dict(self.per_answer_type),
            "num_questions": self.num_questions,
            "num_missing": self.num_missing,
        }


def vqa_accuracy(predictions: Mapping[Any, str], ground_truth: Sequence[Mapping[str, Any]]) -> VQAMetrics:
    """Scores ``predictions`` (question id -> answer) against VQAv2-style annotations.

    Args:
        predictions: each question's predicted answer. A question without one scores 0
            (the official code refuses such a results file; counted in ``num_missing``).
        ground_truth: one record per question with ``question_id``, ``answers`` (strings,
            or VQAv2 dicts with an ``"answer"`` key), and optionally ``question_type`` and
            ``answer_type`` (default ``""``).
    """
    if not ground_truth:
        raise ValueError("no ground-truth question to score")
    overall: list[float] = []
    by_qtype: dict[str, list[float]] = defaultdict(list)
    by_atype: dict[str, list[float]] = defaultdict(list)
    per_question: dict[Any, float] = {}
    missing = 0
    for record in ground_truth:
        qid = record["question_id"]
        answers = [a["answer"] if isinstance(a, Mapping) else str(a) for a in record["answers"]]
        if qid in predictions:
            acc = question_accuracy(str(predictions[qid]), answers)
        else:
            acc, missing = 0.0, missing + 1
        per_question[qid] = acc
        overall.append(acc)
        by_qtype[str(record.get("question_type", ""))].append(acc)
        by_atype[str(record.get("answer_type", ""))].append(acc)
    return VQAMetrics(
        accuracy=sum(overall) / len(overall),
        per_question_type={k: sum(v) / len(v) for k, v in sorted(by_qtype.items())},
        per_answer_type={k: sum(v) / len(v) for k, v in sorted(by_atype.items())},
        num_questions=len(overall),
        num_missing=missing,
        per_question=per_question,
    )
