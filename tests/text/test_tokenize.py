"""Prompts, tokenization and positive maps against the official ones."""

import pytest
import torch

from glip.text import BUNDLED_TEXT_ENCODERS, Prompt, PromptError, load_tokenizer, parse_prompt, tokenize_prompt
from tests.conftest import CASES, load_case


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])


@pytest.mark.parametrize("case", CASES)
def test_tokens_and_positive_map_match_official(tokenizer, case):
    c = load_case("tiny_glip_t", case)
    prompt = parse_prompt(c["caption"])
    assert [list(map(list, s)) for s in prompt.spans] == c["tokens_positive_char_spans"]
    assert list(prompt.phrases) == [c["label_to_entity"][i + 1] for i in range(len(prompt.phrases))]
    tok = tokenize_prompt(tokenizer, prompt, 256)
    assert torch.equal(tok.input_ids, c["input_ids"])
    assert torch.equal(tok.attention_mask, c["attention_mask"])
    torch.testing.assert_close(tok.positive_map, c["positive_map"], rtol=0, atol=0)
    assert tok.label_to_token == {int(k): v for k, v in c["positive_map_label_to_token"].items()}


def test_class_name_list_joins_as_official_evaluation():
    p = parse_prompt(["cat", "remote control"])
    assert p.caption == "cat. remote control"
    assert p.spans == (((0, 3),), ((5, 19),))


def test_free_form_caption_finds_noun_phrases_offline():
    p = parse_prompt("a man riding a horse next to a dog")
    assert p.phrases == ("a man", "a horse", "a dog")
    assert p.spans == (((0, 5),), ((13, 20),), ((29, 34),))
    assert parse_prompt("two dogs play in the snow").phrases == ("two dogs", "the snow")


def test_explicit_spans():
    p = Prompt.from_spans("a man riding a horse", [(0, 5), (13, 20)])
    assert p.phrases == ("a man", "a horse")
    with pytest.raises(PromptError):
        Prompt.from_spans("short", [(0, 50)])


@pytest.mark.parametrize("bad", ["", "   ", "...", " . , . "])
def test_empty_or_punctuation_prompts_are_rejected(bad):
    with pytest.raises(PromptError):
        parse_prompt(bad)


def test_phrase_beyond_token_limit_is_an_error(tokenizer):
    long = ". ".join(["thing"] * 200) + ". a cat."
    with pytest.raises(PromptError, match="beyond the 256-token limit"):
        tokenize_prompt(tokenizer, parse_prompt(long), 256)
