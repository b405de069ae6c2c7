"""Caption data: synthetic captions (content, determinism), the COCO-captions reader's
errors and the captioning dataset's samples."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from glip.data import TrainTransform, generate_synthetic
from glip.data.captions import CAPTIONING, CaptionDataset, describe_objects, ground_objects, load_coco_captions


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("caps"), num_train=12, num_val=4, image_size=96, seed=2)


def test_hand_cases() -> None:
    rng = np.random.default_rng(0)
    assert describe_objects([], rng) == "an empty picture"
    assert describe_objects([("red circle", [0, 0, 10, 10])], rng) == "a red circle"
    two = [("red circle", [0, 0, 20, 20]), ("blue square", [50, 5, 10, 10])]
    assert {describe_objects(two, np.random.default_rng(s)) for s in range(8)} == {
        "a red circle to the left of a blue square",
        "a blue square to the right of a red circle",
    }
    vertical = [("green star", [10, 60, 30, 30]), ("red circle", [12, 0, 20, 20])]
    assert {describe_objects(vertical, np.random.default_rng(s)) for s in range(8)} == {
        "a green star below a red circle",
        "a red circle above a green star",
    }
    three = [("a b", [0, 0, 4, 4]), ("c d", [0, 0, 30, 30]), ("e f", [40, 0, 20, 20])]
    assert describe_objects(three, np.random.default_rng(1)).endswith(" and a a b")


def test_synthetic_captions_describe_each_image(synthetic) -> None:
    for split, det_json in (("train", synthetic.train_json), ("val", synthetic.val_json)):
        det = json.loads(det_json.read_text())
        caps = load_coco_captions(synthetic.root / f"captions_{split}.json")
        assert caps.image_ids == [im["id"] for im in det["images"]]
        names = {c["id"]: c["name"] for c in det["categories"]}
        for image_id in caps.image_ids:
            (text,) = caps.captions[image_id]
            present = {names[a["category_id"]] for a in det["annotations"] if a["image_id"] == image_id}
            named = set(re.findall(r"a (\w+ \w+?)(?= to | above| below| and|$)", text))
            assert named and named <= present, (text, present)
            if len(present) > 1 or sum(a["image_id"] == image_id for a in det["annotations"]) > 1:
                assert any(r in text for r in (" to the left of ", " to the right of ", " above ", " below "))


def test_reader_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="caption file not found"):
        load_coco_captions(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a json file"):
        load_coco_captions(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO-captions json"):
        load_coco_captions(bad)
    bad.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 2, "caption": "x"}]})
    )
    with pytest.raises(ValueError, match="unknown image id 2"):
        load_coco_captions(bad)


def test_dataset_samples(synthetic) -> None:
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    transform = TrainTransform([64], 96, 0.0)
    data = CaptionDataset(synthetic.root / "captions_train.json", synthetic.image_dir, tokenizer, transform, 24)
    assert len(data) == 12
    sample = data[3]
    assert sample.kind == CAPTIONING and sample.index == 3 and len(sample.targets.boxes) == 0
    assert sample.targets.positive_map.shape == (0, 24)
    assert sample.input_ids[0] == tokenizer.cls_token_id and sample.input_ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(sample.input_ids[1:-1]) == sample.caption
    with pytest.raises(ValueError, match="must not be flipped"):
        CaptionDataset(
            synthetic.root / "captions_train.json", synthetic.image_dir, tokenizer, TrainTransform([64], 96, 0.5), 24
        )


def test_ground_objects_spans_name_their_shapes() -> None:
    three = [("red circle", [0, 0, 20, 20]), ("blue square", [50, 5, 30, 30]), ("red circle", [90, 0, 10, 10])]
    for seed in range(6):
        rng, again = np.random.default_rng(seed), np.random.default_rng(seed)
        sentence, spans = ground_objects(three, rng)
        assert sentence == describe_objects(three, again)  # the same draws, the same sentence
        assert [i for i, _ in spans][-1] == 2 and sorted(i for i, _ in spans) == [0, 1, 2]
        for index, (start, end) in spans:
            assert sentence[start:end] == f"a {three[index][0]}"
        # the two "red circle" phrases point at two different spans, in sentence order
        assert [s for _, s in spans] == sorted(s for _, s in spans)
    assert ground_objects([], np.random.default_rng(0)) == ("an empty picture", [])


def test_grounded_captions_are_mdetr_data(synthetic) -> None:
    """grounding_<split>.json: the captions of captions_<split>.json, each named shape's
    box and mask on its noun phrase, readable as MDETR grounding data."""
    from glip.data import MdetrGroundingDataset
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    det = json.loads(synthetic.train_json.read_text())
    grounded = json.loads((synthetic.root / "grounding_train.json").read_text())
    caps = load_coco_captions(synthetic.root / "captions_train.json")
    by_id = {a["id"]: a for a in det["annotations"]}
    names = {c["id"]: c["name"] for c in det["categories"]}
    for record in grounded["images"]:
        assert [record["caption"]] == caps.captions[record["id"]]
    for ann in grounded["annotations"]:
        (start, end), caption = (
            ann["tokens_positive"][0],
            next(r["caption"] for r in grounded["images"] if r["id"] == ann["image_id"]),
        )
        assert caption[start:end] == f"a {names[ann['category_id']]}"
        source = [a for a in by_id.values() if a["image_id"] == ann["image_id"] and a["bbox"] == ann["bbox"]]
        assert source and source[0]["segmentation"] == ann["segmentation"]
    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    data = MdetrGroundingDataset(
        synthetic.root / "grounding_train.json", synthetic.image_dir, tokenizer, TrainTransform([64], 96, 0.0), 32
    )
    sample = data[0]
    first = [a for a in grounded["annotations"] if a["image_id"] == sample.image_id]
    assert len(sample.targets.boxes) == len(first) and sample.caption == caps.captions[sample.image_id][0]
    assert (sample.targets.positive_map.sum(1) > 0).all()  # every box grounds its phrase's tokens
