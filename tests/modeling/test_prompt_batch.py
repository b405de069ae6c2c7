"""Several prompt chunks per pass equal one at a time; encoded text reused equals text recomputed."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from glip.api import Predictor
from glip.modeling.prompt_batch import repeat_features, split_head, stack_text
from glip.structures import Detections, HeadOutputs, ImageBatch, TextFeatures
from glip.text.tokenize import trim_padding
from tests.conftest import load_case

# Phrases whose chunks have different token widths (so stacking pads), and a class that
# sits in several chunks (so merging runs its cross-chunk NMS).
NAMES = ["a cat", "a remote control", "a dog", "a very small striped cat on a sofa", "a cat", "remote", "a sofa"]


def _same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b) and a.phrases == b.phrases and torch.equal(a.labels, b.labels)
    # Float rounding only: the padded tokens are masked, but batched kernels add in another order.
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def _text(width: int, fill: float) -> TextFeatures:
    hidden = torch.full((1, width, 4), fill)
    mask = torch.ones(1, width, dtype=torch.int64)
    return TextFeatures(hidden=hidden, embedded=hidden * 2, mask=mask, aggregate=torch.full((1, 4), fill))


def test_stack_text_pads_prompt_major_and_split_head_undoes_it():
    one = _text(2, 1.0)
    assert stack_text([one], 3).hidden.shape == (3, 2, 4)  # one prompt: views, as before
    stacked = stack_text([_text(2, 1.0), _text(5, 2.0)], 3)  # K = 2 prompts, B = 3 images
    assert stacked.hidden.shape == (6, 5, 4) and stacked.mask.shape == (6, 5)
    assert stacked.mask[:3].tolist() == [[1, 1, 0, 0, 0]] * 3 and stacked.mask[3:].sum() == 15
    assert stacked.hidden[:3, :2].eq(1).all() and stacked.hidden[:3, 2:].eq(0).all()
    assert stacked.embedded[3:].eq(4).all() and stacked.aggregate[:, 0].tolist() == [1, 1, 1, 2, 2, 2]
    features = [torch.arange(3.0).view(3, 1, 1, 1)]  # B = 3 images, told apart by value
    assert repeat_features(features, 2)[0].flatten().tolist() == [0, 1, 2, 0, 1, 2]  # row k * B + b
    logits = torch.arange(6.0).view(6, 1, 1).expand(6, 1, 5)  # each row holds its own index
    head = HeadOutputs([torch.zeros(6, 4, 1, 1)], [torch.zeros(6, 1, 1, 1)], [logits], num_classes=80)
    part = split_head(head, 1, 3, 2)
    assert part.dot_product_logits[0].shape == (3, 1, 2) and part.dot_product_logits[0][:, 0, 0].tolist() == [3, 4, 5]


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    # The fixture model at a smaller input size (a shallow copy: the weights are shared).
    model = copy.copy(tiny_model_factory("tiny_glip_t"))
    model.preprocessing = replace(model.preprocessing, min_size=192, max_size=320)
    return model


@pytest.fixture(scope="module")
def images():
    a = load_case("tiny_glip_t", "chelsea")["image_original_rgb_uint8"].numpy()
    return [a, a[:, ::-1].copy()]


def test_chunks_batched_equal_chunks_one_at_a_time(model, images):
    prep = model.preprocessing
    tensors, sizes = zip(*(prep(im) for im in images))
    batch = ImageBatch.from_tensors(list(tensors), prep.size_divisibility)
    chunks = Predictor(model).prepare_prompt(NAMES, chunk_size=2)
    assert len({trim_padding(c).input_ids.shape[1] for c in chunks}) > 1  # stacking really pads
    one = model.detect_prompts(batch, chunks, original_sizes=sizes, prompts_per_pass=1)
    for per_pass in (3,):  # a pass of 3 prompts (padded to the widest), then a pass of 1
        many = model.detect_prompts(batch, chunks, original_sizes=sizes, prompts_per_pass=per_pass)
        for x_chunk, y_chunk in zip(one, many):
            for x, y in zip(x_chunk, y_chunk):
                assert len(x) > 0
                _same(x, y)


def test_encoded_text_equals_text_recomputed(model, images):
    predictor = Predictor(model, prompts_per_pass=3)
    encoded = predictor.encode_prompt(NAMES, chunk_size=2)
    again = model.encode_prompts(encoded.chunks)
    for x, y in zip(encoded.text, again):
        assert torch.equal(x.hidden, y.hidden) and torch.equal(x.mask, y.mask)
    for image in images[:1]:
        reused = predictor.predict(image, encoded, threshold=0.0, max_detections=0)
        fresh = predictor.predict(image, NAMES, threshold=0.0, max_detections=0, chunk_size=2)
        assert len(reused) > 0 and torch.equal(reused.boxes, fresh.boxes) and torch.equal(reused.scores, fresh.scores)
    with pytest.raises(ValueError, match="another model"):
        Predictor(model, autocast="bfloat16").predict(images[0], encoded)


def test_merged_class_list_equals_one_chunk_per_pass(model, images):
    names = [f"object number {i}" for i in range(100)] + ["a cat", "a dog"]
    batched = Predictor(model, prompts_per_pass=4).predict(images[0], names, threshold=0.0, max_detections=0)
    single = Predictor(model, prompts_per_pass=1).predict(images[0], names, threshold=0.0, max_detections=0)
    _same(batched, single)
