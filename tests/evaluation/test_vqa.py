"""VQA accuracy on hand cases: min(matches / 3, 1) averaged over the 10 leave-one-out
subsets, per-type means, and the answer comparison of each official file at every branch
(``vqaEval.py``'s ``VQAEval.evaluate``, ``processPunctuation``, ``processDigitArticle``):
``"vqa-api"`` (GT-Vision-Lab/VQA master) and ``"evalai"`` (Cloud-CV/VQA-Evaluation)."""

from __future__ import annotations

from itertools import combinations

import pytest

from glip.evaluation.vqa import VQA_RULES, question_accuracy, vqa_accuracy
from glip.text.vqa import process_digit_article, process_punctuation


def formula(prediction: str, answers: list[str]) -> float:
    """The definition: the mean over the 10-choose-9 subsets of min(matches / 3, 1)."""
    subsets = list(combinations(range(len(answers)), len(answers) - 1))
    return sum(min(sum(answers[i] == prediction for i in s) / 3, 1.0) for s in subsets) / len(subsets)


@pytest.mark.parametrize("rule", VQA_RULES)
@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_accuracy_by_number_of_matching_annotators(rule: str, matches: int, expected: float) -> None:
    answers = ["cat"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert question_accuracy("cat", answers, rule) == pytest.approx(expected)
    assert question_accuracy("cat", answers, rule) == pytest.approx(formula("cat", answers))


def _ten(*given: str, rest: str = "0") -> list[str]:
    return [*given, *[rest] * (10 - len(given))]


# (prediction, the 10 answers, accuracy under "vqa-api", accuracy under "evalai"); each value
# was checked by running the two official files on the same case.
CASES = [
    # The example: annotators disagree. vqa-api normalises their "two" to "2" as
    # the prediction's (1 match: 0.3); evalai leaves "two" as it is (0 matches).
    ("two", _ten("don't know", "two"), 0.3, 0.0),
    # Annotators agree: vqa-api compares the cleaned strings only, evalai still normalises
    # the prediction (lower case, number words) but not the answers.
    ("Yes", ["yes"] * 10, 0.0, 1.0),
    (" yes\n", ["yes"] * 10, 1.0, 1.0),
    ("two", ["two"] * 10, 1.0, 0.0),
    ("2", ["two"] * 10, 0.0, 0.0),
    # evalai does not clean the answers: an annotator's trailing space stays.
    ("yes", ["yes "] * 10, 1.0, 0.0),
    # Disagreeing annotators' case: vqa-api lower-cases them, evalai does not.
    ("dog", _ten("Dog", "Dog", "Dog", rest="cat"), 0.9, 0.0),
    # Articles: dropped from both sides by vqa-api; from the prediction only by evalai.
    ("the dog", _ten("dog", "a dog", "the dog", rest="cat"), 0.9, 0.3),
    # Contractions: "dont" -> "don't" on the prediction; evalai leaves the answers' "dont".
    ("dont know", _ten("dont know", "don't know", "don't know", rest="no"), 0.9, 0.6),
    # Punctuation touching a space is deleted, elsewhere it becomes a space (both sides).
    ("black and white", _ten("black-and-white", "black and white", "black & white", rest="red"), 0.6, 0.6),
    # A digit-comma-digit anywhere deletes every mark: "1,000" -> "1000".
    ("1000", _ten("1,000", "1,000", "1000", rest="10"), 0.9, 0.9),
    # A period stays only before a digit: "3.5" keeps it, "5." loses it.
    ("5", _ten("5.", "5.", "3.5", rest="4"), 0.6, 0.6),
    ("3.5", _ten("5.", "3.5", "3.5", rest="4"), 0.6, 0.6),
    # ":" and "'" are not in the official list of marks: "3:00" never becomes "300".
    ("300", _ten("3:00", "3:00", "3:00", rest="noon"), 0.0, 0.0),
    # "none" is a number word (-> "0") for vqa-api on both sides; evalai maps the prediction only.
    ("none", _ten("none", "none", "0", rest="1"), 0.9, 0.3),
]


@pytest.mark.parametrize(("prediction", "answers", "vqa_api", "evalai"), CASES)
def test_each_official_rule_on_hand_cases(prediction: str, answers: list[str], vqa_api: float, evalai: float) -> None:
    assert question_accuracy(prediction, answers) == pytest.approx(evalai)  # the default rule: the EvalAI server's
    assert question_accuracy(prediction, answers, "vqa-api") == pytest.approx(vqa_api)
    assert question_accuracy(prediction, answers, "evalai") == pytest.approx(evalai)


def test_normalisation_quirks_of_the_official_tables() -> None:
    # The official period pattern gets re.UNICODE (32) as its count: at most 32 periods go.
    assert process_punctuation("." * 33 + "x") == ".x"
    # Contraction keys with capitals ("Im", "Ive") never match the lower-cased words.
    assert process_digit_article("Im") == "im" and process_digit_article("ive") == "ive"
    # Number words map whole words only, before articles are dropped; spaces collapse.
    assert process_digit_article("The  one   twenty") == "1 twenty"


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
    metrics = vqa_accuracy({1: "red", 2: "2", 4: "ignored"}, gt, rule="vqa-api")  # question 3 unanswered
    assert metrics.accuracy == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert metrics.per_question_type == pytest.approx({"how many": 0.6, "what color": 0.5})
    assert metrics.per_answer_type == pytest.approx({"number": 0.6, "other": 0.5})
    assert metrics.num_missing == 1 and metrics.num_questions == 3
    assert metrics.to_dict()["rule"] == "vqa-api"
    assert set(metrics.to_dict()) >= {"accuracy", "per_question_type", "per_answer_type", "rule"}
    # The per-type means follow the rule: "Red" misses under vqa-api (all agree), not under evalai.
    assert vqa_accuracy({1: "Red"}, gt[:1], rule="vqa-api").accuracy == 0.0
    evalai = vqa_accuracy({1: "Red"}, gt[:1])  # the default rule: the EvalAI server's
    assert evalai.accuracy == 1.0 and evalai.per_question_type == {"what color": 1.0} and evalai.rule == "evalai"
    with pytest.raises(ValueError):
        vqa_accuracy({}, [])
    with pytest.raises(ValueError, match="rule"):
        vqa_accuracy({1: "red"}, gt, rule="lavis")
