"""Predictor prompts of fine-tuned models: their classes by default, the tuned prompt however
it is spelled (so the prompt offset applies), a one-line warning when the offset cannot."""

from __future__ import annotations

import logging

import pytest
import torch

from glip.api import Predictor
from glip.data import generate_synthetic
from glip.hub.loading import load_model
from glip.text import PromptError, tokenize_prompt
from glip.text.prompt import from_class_names

CLASSES = ["red circle", "blue square"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    ds = generate_synthetic(tmp_path_factory.mktemp("img"), num_train=1, num_val=0, image_size=96, seed=1,
                            colors=("red", "blue"), shapes=("circle", "square"), max_objects=3)  # fmt: skip
    return ds.image_dir / "train_00000.png"


@pytest.fixture(scope="module")
def models():
    """The demo model, and a copy prompt-tuned (a random offset) for "red circle. blue square"."""
    base, tuned = load_model("demo-shapes"), load_model("demo-shapes")
    prompt = from_class_names(CLASSES)
    tokens = tokenize_prompt(tuned.tokenizer, prompt, tuned.max_query_len)
    n = int(tokens.attention_mask[0].sum())
    offset = tuned.enable_prompt_offset(token_ids=tokens.input_ids[0, :n].tolist())
    with torch.no_grad():
        offset.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    tuned.tuned_prompt = prompt
    return Predictor(base, device="cpu"), Predictor(tuned, device="cpu")


def _same(a, b) -> bool:
    return len(a) == len(b) and torch.equal(a.scores, b.scores) and torch.equal(a.boxes, b.boxes)


def test_spellings_of_the_tuned_prompt_use_its_offset(models, image, caplog):
    base, tuned = models
    reference = tuned.predict(image, tuned.model.tuned_prompt, threshold=0.0)
    assert not _same(reference, base.predict(image, "red circle. blue square", threshold=0.0))  # the offset acts
    for spelling in ("red circle. blue square.", " Red circle .blue  square", CLASSES, None):
        with caplog.at_level(logging.WARNING, logger="glip.api"):
            got = tuned.predict(image, spelling, threshold=0.0)
        assert _same(got, reference) and got.phrases == reference.phrases, spelling
    assert not caplog.records


@pytest.mark.parametrize("other", ["blue square. red circle.", "red square."])  # the image holds one red square
def test_another_prompt_runs_without_the_offset_and_says_so(models, image, other, caplog):
    base, tuned = models
    with caplog.at_level(logging.WARNING, logger="glip.api"):
        got = tuned.predict(image, other, threshold=0.0)
    assert len(got) > 0 and _same(got, base.predict(image, other, threshold=0.0))
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "prompt-tuned" in message and "runs without it" in message


def test_no_prompt_needs_recorded_classes(models, image):
    base, _ = models
    with pytest.raises(PromptError, match="records no classes"):
        base.predict(image)
