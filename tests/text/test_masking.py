"""MLM corruption (statistics, each rule by hand, seeding, official replay) and the span maps
(greenlight, token category ids) against the official fixtures."""

from __future__ import annotations

import pytest
import torch

from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer
from glip.text.masking import IGNORE_INDEX, apply_token_masking, batch_greenlight, greenlight_map, mask_tokens
from glip.text.spans import build_category_vocabulary, normalize_class_name, token_class_ids
from glip.utils.seeding import sample_generators, sample_seed
from tests.conftest import FIXTURES

V2 = FIXTURES / "official_train_v2"
MASK_ID = 103  # [MASK] in the BERT vocabulary
VOCAB = 30522


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])


def _encode(tokenizer, caption: str, width: int = 256):
    return tokenizer([caption], max_length=width, padding="max_length", truncation=True, return_tensors="pt")


def _load(name: str) -> dict:
    path = V2 / name / "case.pth"
    if not path.is_file():
        pytest.skip(f"official fixtures not found at {path.parent}")
    return torch.load(path, weights_only=True)


def test_masking_statistics() -> None:
    """Over 128k tokens: 15% selected; of those 80% [MASK], 10% random, 10% kept (each within 1%)."""
    batch, width = 500, 256
    ids = torch.randint(1000, 2000, (batch, width), generator=torch.Generator().manual_seed(0))
    out = mask_tokens(
        ids, torch.ones_like(ids), None, sample_generators([sample_seed(1, 0, i) for i in range(batch)]), MASK_ID, VOCAB
    )
    selected = out.decision > 0
    frac = selected.float().mean().item()
    masked, rand, kept = ((out.decision == k).sum().item() / selected.sum().item() for k in (1, 2, 3))
    assert abs(frac - 0.15) < 0.01
    assert abs(masked - 0.8) < 0.01 and abs(rand - 0.1) < 0.01 and abs(kept - 0.1) < 0.01
    assert (out.input_ids[out.decision == 1] == MASK_ID).all()
    assert torch.equal(out.input_ids[out.decision == 3], ids[out.decision == 3])
    assert torch.equal(out.input_ids[out.decision == 0], ids[out.decision == 0])
    random_ids = out.input_ids[out.decision == 2]
    assert (random_ids != ids[out.decision == 2]).float().mean() > 0.9  # uniform over 30522 ids
    assert random_ids.min() >= 0 and random_ids.max() < VOCAB and random_ids.unique().numel() > 0.9 * random_ids.numel()
    # No greenlight = every selected token scored with its original id.
    assert torch.equal(out.labels != IGNORE_INDEX, selected) and torch.equal(out.labels[selected], ids[selected])


def test_each_rule_by_hand() -> None:
    """Draws chosen per position: thresholds, padding, greenlight -1 / 0 / 1."""
    ids = torch.tensor([[101, 11, 12, 13, 14, 15, 16, 102, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0]])
    green = torch.tensor([[0, 1, 1, 1, 1, -1, 0, 0, 0]])
    # u: [CLS] mask, 11 mask (u/0.15 < 0.8), 12 random, 13 kept, 14 unselected, 15 never
    # (greenlight -1), 16 mask but unscored (greenlight 0), [SEP] unselected, padding never.
    uniforms = torch.tensor([[0.01, 0.119, 0.125, 0.14, 0.15, 0.0, 0.05, 0.9, 0.0]], dtype=torch.float64)
    random_ids = torch.full_like(ids, 777)
    out = apply_token_masking(ids, attention, green, uniforms, random_ids, MASK_ID)
    assert out.input_ids.tolist() == [[MASK_ID, MASK_ID, 777, 13, 14, 15, MASK_ID, 102, 0]]
    assert out.decision.tolist() == [[1, 1, 2, 3, 0, -1, 1, 0, 0]]
    assert out.labels.tolist() == [[-100, 11, 12, 13, -100, -100, -100, -100, -100]]
    assert out.num_scored == 3


def test_seeding() -> None:
    ids = torch.randint(1000, 2000, (3, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def run(seeds: list[int]):
        return mask_tokens(ids, mask, None, sample_generators(seeds), MASK_ID, VOCAB)

    seeds = [sample_seed(5, 2, i) for i in range(3)]
    a, b = run(seeds), run(seeds)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.decision[0], a.decision[1])  # different sample index, different mask
    assert not torch.equal(run([sample_seed(5, 3, i) for i in range(3)]).decision, a.decision)  # next epoch
    # A prompt's corruption depends only on its own seed, not on its batch.
    alone = mask_tokens(ids[1:2], mask[1:2], None, sample_generators(seeds[1:2]), MASK_ID, VOCAB)
    assert torch.equal(alone.input_ids[0], a.input_ids[1])
    assert sample_seed(1, 2, 3) != sample_seed(1, 3, 2) and 0 <= sample_seed(1, 2, 3) < 2**63


def test_greenlight_rules(tokenizer) -> None:
    caption = "cat. dog. bird"
    enc = _encode(tokenizer, caption, width=16)  # [CLS] cat . dog . bird [SEP] pad...
    positives = [(0, 3), (10, 14)]  # cat, bird have boxes; dog is a negative class
    det = greenlight_map(enc, caption, "detection", 16, positives)
    assert det.tolist() == [0, 1, 0, 0, 0, 1, 0] + [0] * 9
    assert (greenlight_map(enc, caption, "detection", 16, positives, no_mask_for_od=True) == -1).all()
    assert torch.equal(greenlight_map(enc, caption, "detection", 16, positives, no_mask_for_gold=True), det)
    for kind in ("grounding", "caption"):  # the whole caption, not [CLS] / [SEP] / padding
        assert greenlight_map(enc, caption, kind, 16).tolist() == [0, 1, 1, 1, 1, 1, 0] + [0] * 9
    assert (greenlight_map(enc, caption, "grounding", 16, no_mask_for_gold=True) == -1).all()
    assert greenlight_map(enc, caption, "caption", 16, no_mask_for_gold=True).tolist()[1] == 1
    assert (greenlight_map(enc, caption, "detection", 16, positives, only_positives=False) == 1).all()
    with pytest.raises(ValueError, match="data kind"):
        greenlight_map(enc, caption, "vqa", 16)  # type: ignore[arg-type]

    ids, attention = enc["input_ids"], enc["attention_mask"]
    out = apply_token_masking(ids, attention, det[None], torch.zeros(1, 16, dtype=torch.float64), ids, MASK_ID)
    assert torch.equal(out.input_ids != ids, attention.bool())  # u = 0: every real token masked
    assert out.labels[0].tolist()[:7] == [-100, ids[0, 1].item(), -100, -100, -100, ids[0, 5].item(), -100]


@pytest.mark.parametrize("only_positives", [True, False])
@pytest.mark.parametrize("no_od", [True, False])
@pytest.mark.parametrize("no_gold", [True, False])
def test_batch_greenlight_equals_the_per_prompt_rules(tokenizer, only_positives, no_od, no_gold) -> None:
    """The datasets store the default map; the batch applies the head's settings per data kind."""
    caption = "cat. dog. bird"
    enc = _encode(tokenizer, caption, width=16)
    positives = [(0, 3), (10, 14)]
    kinds = ["detection", "grounding", "caption"]
    base = torch.stack([greenlight_map(enc, caption, k, 16, positives if k == "detection" else ()) for k in kinds])
    got = batch_greenlight(base, kinds, only_positives, no_od, no_gold)
    settings = {"only_positives": only_positives, "no_mask_for_od": no_od, "no_mask_for_gold": no_gold}
    for row, kind in zip(got, kinds):
        spans = positives if kind == "detection" else ()
        assert torch.equal(row, greenlight_map(enc, caption, kind, 16, spans, **settings)), (kind, settings)
    with pytest.raises(ValueError, match="one data kind per prompt"):
        batch_greenlight(base, kinds[:2])


def test_category_vocabulary() -> None:
    vocab = build_category_vocabulary(["Person", "traffic_light", "person", "bat (animal)", "cat"])
    assert vocab == {"bat": 0, "cat": 1, "person": 2, "traffic light": 3}
    assert normalize_class_name("  Traffic_Light ") == "traffic light"


def test_official_masking_replay() -> None:
    """The recorded official draws through our rule give the recorded corruption exactly."""
    case = _load("tiny_glip_t_mlm")
    rw = case["random_word"]
    out = apply_token_masking(
        rw["input_ids_before"],
        case["attention_mask"],
        rw["greenlight_map_passed"].long(),
        rw["uniform_draws"],
        rw["input_ids_after"],  # at "random" positions: the id the official process drew
        rw["mask_token_id"],
    )
    assert torch.equal(out.input_ids, rw["input_ids_after"])
    assert torch.equal(out.labels, rw["mlm_labels"])
    assert torch.equal(out.decision, rw["decision"])
    assert out.num_scored == 6


def test_official_greenlight_and_token_classes(tokenizer) -> None:
    mlm = _load("tiny_glip_t_mlm")  # grounding batch: the whole caption is scored
    for caption, expected in zip(mlm["captions"], mlm["greenlight_map"]):
        assert torch.equal(greenlight_map(_encode(tokenizer, caption), caption, "grounding", 256), expected.long())

    inter = _load("tiny_glip_t_inter")  # detection batch: only the positive class names
    labelmap = {"cat": 1, "flag": 2, "person": 3, "dog": 4, "rocket": 5}
    for caption, target in zip(inter["captions"], inter["targets"]):
        enc = _encode(tokenizer, caption)
        spans = [tuple(s[0]) for s in target["field_tokens_positive"]]
        green = greenlight_map(enc, caption, "detection", 256, spans)
        assert torch.equal(green, target["field_greenlight_map"].long())
        class_spans = [(caption.index(n), caption.index(n) + len(n), i) for n, i in labelmap.items() if n in caption]
        official = target["field_positive_map_for_od_labels"].long()
        # The official " background " filler gets label 0, no category: -1 here.
        expected = torch.where(official > 0, official, torch.full_like(official, -1))
        assert torch.equal(token_class_ids(enc, class_spans, 256), expected)
