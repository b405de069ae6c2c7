"""VQA answers and prompts: the official normalisation, soft scores, the vocabulary rule
and the ``question [MASK]`` prompt, on hand cases."""

from __future__ import annotations

import pytest
import torch

from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer
from glip.text.vqa import (
    AnswerSlotError,
    answer_soft_scores,
    build_answer_vocabulary,
    normalize_answer,
    process_punctuation,
    soft_score,
    tokenize_question,
    vqa_prompt,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes", "yes"),
        ("  Two\n", "2"),  # number word -> digit, whitespace
        ("none", "0"),
        ("the red ball", "red ball"),  # articles dropped
        ("a dog", "dog"),
        ("dont know", "don't know"),  # contraction restored
        ("isnt", "isn't"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("yes.", "yes"),  # other periods go
        ("black/white", "black white"),  # punctuation without a space -> a space
        ("black / white", "black white"),  # touching a space -> deleted (words re-split)
        ("1,000", "1000"),  # a digit-comma-digit anywhere: punctuation deleted
        ("t-shirt", "t shirt"),
        ("hello!", "hello"),
    ],
)
def test_normalize_answer_hand_cases(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_process_punctuation_keeps_the_official_rule_per_mark() -> None:
    # "?" touches a space ("? "), so every "?" is deleted; "-" does not, so it becomes a space.
    assert process_punctuation("why? x-y") == "why x y"


def test_soft_scores_are_min_one_over_three() -> None:
    assert [soft_score(n) for n in range(6)] == [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    answers = ["yes"] * 2 + ["Yes."] + ["no"] * 1 + ["maybe"] * 6  # "Yes." normalises to "yes"
    scores = answer_soft_scores(answers, ["no", "yes", "unknown"])
    assert torch.allclose(scores, torch.tensor([1 / 3, 1.0, 0.0]))  # "maybe" is not in the vocabulary


def test_vocabulary_keeps_answers_given_min_count_times() -> None:
    answers = ["yes"] * 9 + ["no"] * 12 + ["2"] * 8 + ["two"] * 1 + ["blue"] * 9 + ["red"] * 3
    # "two" joins "2" (9 in all); ties ordered alphabetically, most frequent first.
    assert build_answer_vocabulary(answers, 9) == ["no", "2", "blue", "yes"]
    assert build_answer_vocabulary(answers, 10) == ["no"]
    assert build_answer_vocabulary(answers, 1)[-1] == "red"
    with pytest.raises(ValueError):
        build_answer_vocabulary(answers, 0)


def test_prompt_ends_with_the_answer_slot() -> None:
    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    assert vqa_prompt("  What color is it? ") == "What color is it? [MASK]"
    ids = tokenize_question(tokenizer, "What color is it?", 16)["input_ids"]
    assert ids[-2] == tokenizer.mask_token_id and ids[-1] == tokenizer.sep_token_id
    with pytest.raises(AnswerSlotError, match="too long"):
        tokenize_question(tokenizer, "word " * 20, 16)
    with pytest.raises(ValueError, match="empty"):
        vqa_prompt("   ")
