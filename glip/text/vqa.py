"""VQA answers and prompts: the official answer normalisation, the answer vocabulary,
soft scores, and the ``question [MASK]`` prompt of GLIPv2's answer head.

Normalisation follows the official VQA evaluation (``vqaEval.py`` of the VQA API,
``processPunctuation`` then ``processDigitArticle``): punctuation removed or turned into
spaces, a period not between digits removed, lower case, number words ``none``/``zero``
... ``ten`` to digits, articles dropped, and apostrophe-less contractions restored
(``dont`` -> ``don't``).

The vocabulary follows the usual VQAv2 rule (bottom-up-attention VQA, 3129 answers):
every question's ``multiple_choice_answer``, normalised, counted once per question;
answers counted at least ``min_count`` times (9) are kept, most frequent first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MASK_TOKEN",
    "AnswerSlotError",
    "answer_soft_scores",
    "build_answer_vocabulary",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "soft_score",
    "tokenize_question",
    "vqa_prompt",
]

# The answer slot appended to every question (the BERT tokenizers' mask token; the official
# divert_boxes falls back to the word "answer" for a tokenizer without one).
MASK_TOKEN = "[MASK]"

# Official vqaEval.py tables.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = ("a", "an", "the")
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern "(?!<=\d)(\.)(?!\d)": its "(?!<=\d)" is a negative LOOKAHEAD for "<="
# and a digit (a typo of the lookbehind "(?<!\d)"), always true at a period, so a period is
# removed unless a digit follows it ("3.5" keeps its period, "5." loses it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official call passes re.UNICODE as the 3rd positional argument of sub(), which is
# ``count``: at most 32 periods are removed.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: each punctuation mark is deleted when it touches a
    space somewhere in the text (or the text has a digit-comma-digit), else replaced by a
    space; then periods not followed by a digit are removed (at most 32, as the official)."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower case, number words to digits, articles
    dropped, contractions restored; words re-joined by single spaces."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """An answer as the official evaluation compares it: newlines and tabs to spaces,
    stripped, then :func:`process_punctuation` and :func:`process_digit_article`."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def soft_score(count: int) -> float:
    """The target of an answer given by ``count`` annotators: ``min(1, count / 3)``."""
    if count < 0:
        raise ValueError(f"an annotator count cannot be negative, got {count}")
    return min(1.0, count / 3.0)


def answer_soft_scores(answers: Sequence[str], vocabulary: Sequence[str] | dict[str, int]) -> Tensor:
    """``Tensor[A]`` float32: each vocabulary answer's :func:`soft_score` among the
    annotators' ``answers`` (normalised; answers outside the vocabulary score nothing).

    Args:
        answers: the annotators' answers of one question (10 in VQAv2).
        vocabulary: the A answers (normalised), or answer -> index.
    """
    index = vocabulary if isinstance(vocabulary, dict) else {a: i for i, a in enumerate(vocabulary)}
    scores = torch.zeros(len(index), dtype=torch.float32)
    for answer, count in Counter(normalize_answer(a) for a in answers).items():
        if answer in index:
            scores[index[answer]] = soft_score(count)
    return scores


def build_answer_vocabulary(answers: Iterable[str], min_count: int = 9) -> list[str]:
    """The normalised answers given at least ``min_count`` times, most frequent first
    (ties in alphabetical order, so the result does not depend on the data order).

    Args:
        answers: one answer per question (VQAv2: its ``multiple_choice_answer``).
        min_count: VQAv2's 9 gives 3129 answers on train2014 + val2014.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    counts = Counter(normalize_answer(a) for a in answers)
    kept = [(a, n) for a, n in counts.items() if n >= min_count and a]
    return [a for a, _ in sorted(kept, key=lambda an: (-an[1], an[0]))]


def vqa_prompt(question: str) -> str:
    """``question [MASK]``: the question (stripped) and the answer slot after one space."""
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    return f"{question} {MASK_TOKEN}"


class AnswerSlotError(ValueError):
    """The question is too long for the answer slot to fit the prompt."""


def tokenize_question(tokenizer: Any, question: str, max_len: int) -> Any:
    """The fast-tokenizer encoding of :func:`vqa_prompt` (``[CLS] question [MASK] [SEP]``),
    checked: the answer slot must be the last token before ``[SEP]`` (the position the
    answer head reads), so a question cut by truncation raises :class:`AnswerSlotError`."""
    encoding = tokenizer(vqa_prompt(question), max_length=max_len, truncation=True)
    ids = encoding["input_ids"]
    if len(ids) < 3 or ids[-2] != tokenizer.mask_token_id:
        raise AnswerSlotError(
            f"the question is too long: with its answer slot it needs more than {max_len} tokens "
            "(model.text.max_query_len)"
        )
    return encoding
