"""The official VQA accuracy on hand cases: min(matches / 3, 1) averaged over the 10
leave-one-out subsets, the official normalisation rule, per-type means."""

from __future__ import annotations

from itertools import combinations

import pytest

from glip.evaluation.vqa import question_accuracy, vqa_accuracy


def formula(prediction: str, answers: list[str]) -> float:
    """The definition: the mean over the 10-choose-9 subsets of min(matches / 3, 1)."""
    subsets = list(combinations(range(len(answers)), len(answers) - 1))
    return sum(min(sum(answers[i] == prediction for i in s) / 3, 1.0) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_accuracy_by_number_of_matching_annotators(matches: int, expected: float) -> None:
    answers = ["cat"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert question_accuracy("cat", answers) == pytest.approx(expected)
    assert question_accuracy("cat", answers) == pytest.approx(formula("cat", answers))


def test_normalisation_only_when_annotators_disagree() -> None:
    # Annotators disagree: "two" / "2" / "the 2" all normalise to "2" (3 matches of 10 -> 0.9).
    answers = ["two", "2", "the 2"] + ["three"] * 7
    assert question_accuracy("Two.", answers) == pytest.approx(0.9)
    # All agree: the official code compares the raw strings (stripped), so "Yes" misses "yes".
    assert question_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0


def test_vqa_accuracy_overall_and_per_type() -> None:
    gt = [
        {"question_id": 1, "question_type": "what color", "answer_type": "other", "answers": ["red"] * 10},
        {
            "question_id": 2,
            "question_type": "how many",
            "answer_type": "number",
            "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["2"] * 2 + ["3"] * 8)],
        },
        {"question_id": 3, "question_type": "what color", "answer_type": "other", "answers": ["blue"] * 10},
    ]
    metrics = vqa_accuracy({1: "red", 2: "2", 4: "ignored"}, gt)  # question 3 unanswered
    assert metrics.accuracy == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert metrics.per_question_type == pytest.approx({"how many": 0.6, "what color": 0.5})
    assert metrics.per_answer_type == pytest.approx({"number": 0.6, "other": 0.5})
    assert metrics.num_missing == 1 and metrics.num_questions == 3
    assert set(metrics.to_dict()) >= {"accuracy", "per_question_type", "per_answer_type"}
    with pytest.raises(ValueError):
        vqa_accuracy({}, [])
