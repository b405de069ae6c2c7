"""Packing random other captions into pseudo-labelled captions as negatives (official
PACK_RANDOM_CAPTION_NUMBER), on hand data."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from glip.config import load_config
from glip.data.caption_packing import CaptionPacking, draw_negatives, grounded_phrases, pack_captions
from glip.data.od_to_grounding import SampleRNG
from glip.engine.data import build_dataset


class _Keep(random.Random):
    """Shuffles leave the order as it is."""

    def shuffle(self, x):  # type: ignore[override]
        pass


class _Reverse(random.Random):
    def shuffle(self, x):  # type: ignore[override]
        x.reverse()


def _rng(cls) -> SampleRNG:
    return SampleRNG(cls(0), np.random.RandomState(0))


def test_pack_joins_with_periods_and_moves_the_spans():
    spans = [[(2, 5)]]  # "cat"
    packed = pack_captions("a cat", spans, ["two dogs.", "a red ball"], [4, 5, 4], 256, _rng(_Keep))
    assert packed.caption == "a cat. two dogs. a red ball. "
    assert (packed.spans, packed.positive, packed.num_negatives) == ([[(2, 5)]], (0, 5), 2)
    # kept negatives [0, 1] reversed to [1, 0]; pieces [own, 1, 0] reversed to [0, 1, own]
    packed = pack_captions("a cat", spans, ["two dogs.", "a red ball"], [4, 5, 4], 256, _rng(_Reverse))
    assert packed.caption == "two dogs. a red ball. a cat. "
    start = len("two dogs. a red ball. ")
    assert packed.spans == [[(start + 2, start + 5)]] and packed.positive == (start, start + 5)
    assert packed.caption[slice(*packed.spans[0][0])] == "cat"


def test_pack_keeps_only_negatives_that_leave_room_for_the_own_caption():
    # 12 tokens in all, the own caption 4: 8 left; 10 does not fit (strictly below), 3 and 3 do (8 -> 5 -> 2)
    packed = pack_captions("own", [], ["long", "b", "c"], [10, 3, 3, 4], 12, _rng(_Keep))
    assert packed.caption == "own. b. c. " and packed.num_negatives == 2
    packed = pack_captions("own", [], ["b", "c"], [3, 3, 4], 10, _rng(_Keep))  # 6 left: 3 fits, then 3 < 3 no
    assert packed.caption == "own. b. " and packed.num_negatives == 1
    assert pack_captions("own", [[(0, 3)]], [], [4], 12, _rng(_Keep)).caption == "own"  # nothing to pack: as is


def test_pack_count_follows_the_official_probabilities():
    assert CaptionPacking(0).draw_count(SampleRNG.from_seed(0)) == 0
    assert CaptionPacking(5).draw_count(SampleRNG.from_seed(0)) == 5  # pack_prob unset: always all
    assert CaptionPacking(5, pack_prob=0.5, no_pack_prob=1.0).draw_count(SampleRNG.from_seed(0)) == 0
    assert CaptionPacking(5, pack_prob=1.0).draw_count(SampleRNG.from_seed(0)) == 5
    counts = {CaptionPacking(5, pack_prob=1e-9).draw_count(SampleRNG.from_seed(s)) for s in range(200)}
    assert counts == {0, 1, 2, 3, 4}  # else a uniform count below the number
    with pytest.raises(ValueError, match=">= 0"):
        CaptionPacking(-1)


def test_grounded_phrases_are_lower_cased_without_a_leading_article():
    caption = "A Red Circle left of the blue square and an owl"
    spans = [[(0, 12)], [(21, 36)], [(41, 47)], [(2, 5), (6, 12)]]
    assert grounded_phrases(caption, spans) == {"red circle", "blue square", "owl"}


def test_disjoint_negatives_share_no_phrase_with_the_own_caption():
    phrases = [frozenset({"red ball"}), frozenset({"red ball", "cat"}), frozenset({"dog"}), frozenset({"cat"})]
    for seed in range(30):
        plain = draw_negatives(0, 3, 4, SampleRNG.from_seed(seed))
        assert len(plain) == 3 and 0 not in plain  # the official draw: any other item, repeats allowed
        picked = draw_negatives(0, 3, 4, SampleRNG.from_seed(seed), phrases.__getitem__)
        assert picked and set(picked) <= {2, 3}  # item 1 also grounds "red ball"
        assert picked == draw_negatives(0, 3, 4, SampleRNG.from_seed(seed), phrases.__getitem__)  # seeded
    # Nothing fits: the slots stay empty.
    assert draw_negatives(1, 2, 4, SampleRNG.from_seed(0), lambda i: frozenset({"x"})) == []
    assert draw_negatives(0, 2, 1, SampleRNG.from_seed(0)) == []  # a set of one has no other caption


CAPTIONS = {1: "a cat on a mat", 2: "two dogs play", 3: "a red ball"}


def _write(tmp_path):
    images = [{"id": k, "file_name": "im.png", "height": 64, "width": 64, "caption": c} for k, c in CAPTIONS.items()]
    annotations = [
        {"id": k, "image_id": k, "bbox": [5, 5, 30, 30], "category_id": 1, "iscrowd": 0, "tokens_positive": [[c.rindex(" ") + 1, len(c)]],
         "score": 0.9}
        for k, c in CAPTIONS.items()
    ]  # fmt: skip
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "o"}]}))
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "im.png")
    return path


def test_pseudo_labelled_source_is_caption_data_packed_with_other_captions(tmp_path, tokenizer):
    path = _write(tmp_path)
    base = [f"data.train_json={path}", f"data.train_images={tmp_path}", "model.text.max_query_len=64",
            "data.format=mdetr", "data.flip_prob=0", "input.min_size_train=[64]", "input.max_size_train=64"]  # fmt: skip
    gold = build_dataset(load_config(None, base), tokenizer)
    assert gold[0].kind == "grounding" and gold[0].caption == CAPTIONS[1]
    cfg = load_config(None, [*base, "data.pseudo_labelled=true", "data.pack_captions=2"])
    ds = build_dataset(cfg, tokenizer)
    for i, own in enumerate(CAPTIONS.values()):
        sample = ds[i]
        assert sample.kind == "caption"
        others = [c for c in CAPTIONS.values() if c != own]
        pieces = sample.caption.removesuffix(". ").split(". ")
        assert len(pieces) == 3 and own in pieces  # its own caption and two others, never itself twice
        assert all(p in others for p in pieces if p != own)
        (start, end), *_ = sample.tokens_positive[0]
        word = own.split()[-1]
        assert sample.caption[start:end] == word and sample.caption[:end].endswith(own)  # still its own words
        token_ids = sample.input_ids[sample.targets.positive_map[0, : len(sample.input_ids)]].tolist()
        assert tokenizer.decode(token_ids) == tokenizer.decode(tokenizer(word, add_special_tokens=False)["input_ids"])
    assert ds[0].caption == ds[0].caption  # a sample's packing is seeded: the same each time
    with pytest.raises(ValueError, match="data.pseudo_labelled applies to data.format 'mdetr'"):
        build_dataset(load_config(None, [*base[:3], "data.pseudo_labelled=true"]), tokenizer)


def test_each_source_says_whether_it_is_pseudo_labelled(tmp_path, tokenizer):
    from glip.engine.multitask import build_training_data

    path = _write(tmp_path)
    sources = (f"[{{format: mdetr, train_json: {path}, train_images: {tmp_path}, name: gold}}, "
               f"{{format: mdetr, train_json: {path}, train_images: {tmp_path}, name: cap, pseudo_labelled: true}}]")  # fmt: skip
    cfg = load_config(None, ["model.text.max_query_len=64", "input.min_size_train=[64]", "input.max_size_train=64",
                             "data.pack_captions=1", f"data.sources={sources}"])  # fmt: skip
    data = build_training_data(cfg, tokenizer)
    gold, cap = (s.dataset[0] for s in data.sources)
    assert (gold.kind, gold.caption) == ("grounding", CAPTIONS[1])  # packing applies to caption data only
    assert cap.kind == "caption" and cap.caption.count(". ") == 2


def test_official_yaml_packing_keys_map_onto_data(tmp_path):
    path = tmp_path / "official.yaml"
    path.write_text(
        "DATASETS:\n  PACK_RANDOM_CAPTION_NUMBER: 20\n  RANDOM_PACK_PROB: 0.5\n  NO_RANDOM_PACK_PROBABILITY: 0.4\n"
    )
    d = load_config(path).data
    assert (d.pack_captions, d.pack_prob, d.no_pack_prob) == (20, 0.5, 0.4)
    path.write_text("DATASETS:\n  PACK_RANDOM_CAPTION_NUMBER: 0\n")
    d = load_config(path).data
    assert (d.pack_captions, d.pack_prob, d.no_pack_prob) == (0, -1.0, 0.0)


def test_disjoint_packing_never_packs_a_caption_grounding_the_same_phrase(tmp_path, tokenizer):
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    data["images"].append({"id": 4, "file_name": "im.png", "height": 64, "width": 64, "caption": "the Ball is red"})
    data["annotations"].append({"id": 4, "image_id": 4, "bbox": [5, 5, 30, 30], "category_id": 1, "iscrowd": 0,
                                "tokens_positive": [[4, 8]], "score": 0.9})  # fmt: skip
    path.write_text(json.dumps(data))
    base = [f"data.train_json={path}", f"data.train_images={tmp_path}", "model.text.max_query_len=64",
            "data.format=mdetr", "data.flip_prob=0", "input.min_size_train=[64]", "input.max_size_train=64",
            "data.pseudo_labelled=true", "data.pack_captions=3"]  # fmt: skip
    # "a red ball" grounds "ball", as "the Ball is red" does: never packed together.
    for disjoint, expect_both in ((False, True), (True, False)):
        ds = build_dataset(load_config(None, [*base, f"data.pack_disjoint={str(disjoint).lower()}"]), tokenizer)
        both = any(
            "a red ball" in ds.load(i, SampleRNG.from_seed(seed)).caption
            and "the Ball is red" in ds.load(i, SampleRNG.from_seed(seed)).caption
            for i in (2, 3) for seed in range(10)
        )  # fmt: skip
        assert both == expect_both
