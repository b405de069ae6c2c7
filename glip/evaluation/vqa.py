"""VQA accuracy as the official VQA evaluation computes it, overall and per question / answer type.

For one question with annotators' answers ``g_1 .. g_n`` (n = 10 in VQAv2) and a predicted
answer ``r``::

    acc = mean over i of min(1, #{j != i : g_j == r} / 3)

i.e. ``min(#matches / 3, 1)`` averaged over the n leave-one-out subsets of n - 1 answers.
Per question type and per answer type, the per-question accuracies are averaged. Scores
here are fractions in [0, 1] (the official tables print 100 x, rounded to 2 digits).

Which strings are compared is where the official files differ. Two rules, each named after
its source (the normalisation steps are :func:`glip.text.vqa.process_punctuation` and
:func:`glip.text.vqa.process_digit_article`, the official ``processPunctuation`` and
``processDigitArticle``; newlines and tabs become spaces and the strings are stripped):

- ``"evalai"`` (default): the rule of the file before 2021, kept by the EvalAI server's copy
  that scores VQAv2 test-dev / test-std submissions (the published numbers), described below.
- ``"vqa-api"``: ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of the VQA API
  (GT-Vision-Lab/VQA) at the head of its ``master`` branch (commit a013f00, "Fixed
  processing answers bug", 2021), ``VQAEval.evaluate``: the prediction and the annotators'
  answers are cleaned of newlines, tabs and outer spaces; only when the annotators
  disagree (``len(set(answers)) > 1``) both sides get both steps. When they all agree,
  the prediction must equal their string as it is (``"Yes"`` misses ``"yes"``). LAVIS
  and other toolkits copy this file.
- ``"evalai"`` in detail: the rule of that file before 2021, kept by the EvalAI server's copy
  (Cloud-CV/VQA-Evaluation, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``,
  ``VQAEval.evaluate``) and by the VQA API's Python 3 port (branch
  ``feature/update_style``): the prediction is always cleaned and given both steps; the
  annotators' answers are not cleaned, and get only the punctuation step, only when they
  disagree. So ``"two"`` (normalised to ``"2"``) never matches an annotator's ``"two"``.

Both rules share the tables and quirks of :mod:`glip.text.vqa` (punctuation deleted or
spaced, a period kept only before a digit, number words ``none``/``zero`` .. ``ten`` to
digits, articles dropped, contractions restored). The official code leaves out each
annotator's answer record in turn (records differ by ``answer_id``); here answers are left
out by position, the same for VQAv2. A question without a prediction scores 0 here (the
official API refuses such a results file).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glip.text.vqa import process_digit_article, process_punctuation

__all__ = ["DEFAULT_VQA_RULE", "VQA_RULES", "VQAMetrics", "question_accuracy", "vqa_accuracy"]

# See the module docstring: GT-Vision-Lab/VQA master (2021 on), and the EvalAI server's copy.
VQA_RULES = ("vqa-api", "evalai")
# The EvalAI server scores the published VQAv2 numbers (test-dev / test-std) with this rule.
DEFAULT_VQA_RULE = "evalai"


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _normalise(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def question_accuracy(prediction: str, answers: Sequence[str], rule: str = DEFAULT_VQA_RULE) -> float:
    """The accuracy of one predicted answer against the annotators' answers under ``rule``
    (one of :data:`VQA_RULES`, see the module docstring)."""
    if rule not in VQA_RULES:
        raise ValueError(f"unknown VQA accuracy rule {rule!r}; choose one of {', '.join(VQA_RULES)}")
    if not answers:
        raise ValueError("a question needs at least one ground-truth answer to be scored")
    if rule == "vqa-api":
        truth = [_clean(a) for a in answers]
        pred = _clean(prediction)
        if len(set(truth)) > 1:
            truth = [_normalise(a) for a in truth]
            pred = _normalise(pred)
    else:  # "evalai"
        truth = list(answers)
        pred = _normalise(_clean(prediction))
        if len(set(truth)) > 1:
            truth = [process_punctuation(a) for a in truth]
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
        rule: the accuracy rule used (:data:`VQA_RULES`).
    """

    accuracy: float
    per_question_type: dict[str, float] = field(default_factory=dict)
    per_answer_type: dict[str, float] = field(default_factory=dict)
    num_questions: int = 0
    num_missing: int = 0
    per_question: dict[Any, float] = field(default_factory=dict)
    rule: str = DEFAULT_VQA_RULE

    def to_dict(self) -> dict[str, Any]:
        """The json of ``metrics.json`` (per-question scores left out)."""
        return {
            "accuracy": self.accuracy,
            "per_question_type": dict(self.per_question_type),
            "per_answer_type": dict(self.per_answer_type),
            "num_questions": self.num_questions,
            "num_missing": self.num_missing,
            "rule": self.rule,
        }


def vqa_accuracy(
    predictions: Mapping[Any, str], ground_truth: Sequence[Mapping[str, Any]], rule: str = DEFAULT_VQA_RULE
) -> VQAMetrics:
    """Scores ``predictions`` (question id -> answer) against VQAv2-style annotations.

    Args:
        predictions: each question's predicted answer. A question without one scores 0
            (the official code refuses such a results file; counted in ``num_missing``).
        ground_truth: one record per question with ``question_id``, ``answers`` (strings,
            or VQAv2 dicts with an ``"answer"`` key), and optionally ``question_type`` and
            ``answer_type`` (default ``""``).
        rule: which official file's rule compares the answers (:data:`VQA_RULES`).
    """
    if rule not in VQA_RULES:
        raise ValueError(f"unknown VQA accuracy rule {rule!r}; choose one of {', '.join(VQA_RULES)}")
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
            acc = question_accuracy(str(predictions[qid]), answers, rule)
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
        rule=rule,
    )
