"""The synthetic shapes dataset: determinism, sane annotations, held-out combinations."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from glip.data import CocoGroundingDataset, TrainTransform, collate_grounding, generate_synthetic
from glip.data.synthetic import COLORS


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic(root / "a", num_train=24, num_val=12, image_size=(128, 192), seed=5, held_out=2)


def test_same_seed_gives_identical_files(synthetic, tmp_path):
    again = generate_synthetic(tmp_path / "b", num_train=24, num_val=12, image_size=(128, 192), seed=5, held_out=2)
    assert _digest(synthetic.root) == _digest(again.root)
    other = generate_synthetic(tmp_path / "c", num_train=2, num_val=0, image_size=(128, 192), seed=6)
    assert (other.image_dir / "train_00000.png").read_bytes() != (synthetic.image_dir / "train_00000.png").read_bytes()


def test_annotations_are_sane(synthetic):
    names = set(synthetic.categories)
    for path in (synthetic.train_json, synthetic.val_json):
        data = json.loads(path.read_text())
        cats = {c["id"]: c["name"] for c in data["categories"]}
        assert set(cats.values()) <= names and all(len(n.split()) == 2 for n in cats.values())
        sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
        for img in data["images"]:
            with Image.open(synthetic.image_dir / img["file_name"]) as im:
                assert (im.height, im.width) == (img["height"], img["width"]) and 128 <= im.height <= 192
        assert len(data["annotations"]) >= len(data["images"])
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            height, width = sizes[ann["image_id"]]
            assert ann["category_id"] in cats and w >= 8 and h >= 8
            assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 0 < ann["area"] <= w * h


def test_shape_pixels_carry_the_named_colour(synthetic):
    """The centre of the object drawn last (on top) has the colour its name says."""
    data = json.loads(synthetic.val_json.read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    for img in data["images"]:
        pixels = np.asarray(Image.open(synthetic.image_dir / img["file_name"]).convert("RGB")).astype(int)
        ann = [a for a in data["annotations"] if a["image_id"] == img["id"]][-1]
        x, y, w, h = ann["bbox"]
        centre = pixels[y + h // 2, x + w // 2]
        nearest = min(COLORS, key=lambda c: float(np.sum((np.array(COLORS[c]) - centre) ** 2)))
        assert nearest == cats[ann["category_id"]].split()[0]


def test_held_out_combinations_only_in_val(synthetic):
    train = json.loads(synthetic.train_json.read_text())
    val = json.loads(synthetic.val_json.read_text())
    held = set(synthetic.held_out)
    assert len(held) == 2
    train_names = {c["name"] for c in train["categories"]}
    assert not held & train_names
    val_cats = {c["id"]: c["name"] for c in val["categories"]}
    assert held <= {val_cats[a["category_id"]] for a in val["annotations"]}
    for word in {w for name in synthetic.categories for w in name.split()}:
        assert any(word in name.split() for name in train_names)  # every word is still trained


def test_named_held_out_and_loading(tmp_path, tokenizer):
    data = generate_synthetic(tmp_path, num_train=3, num_val=2, image_size=64, seed=0, held_out=["red circle"])
    assert data.held_out == ("red circle",)
    ds = CocoGroundingDataset(data.train_json, data.image_dir, tokenizer, TrainTransform([64], 100, 0.5))
    batch = collate_grounding([ds[i] for i in range(len(ds))])
    assert "red circle" not in batch.captions[0] and "blue square" in batch.captions[0]
    assert batch.images.tensor.shape[-2:] == (64, 64)
    assert all(t.positive_map.any(dim=1).all() for t in batch.targets)
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "x", 1, 1, 64, held_out=["pink circle"])


def test_cli_names_every_file_it_writes(tmp_path, capsys):
    """`glip data synthetic` lists the other tasks' files (PhraseCut, VQA, captions) it wrote."""
    from glip.cli import main

    assert main(["data", "synthetic", "--out", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1"]) == 0
    out = capsys.readouterr().out
    names = ("phrasecut_val.json", "vqa_train.json", "vqa_val.json", "captions_train.json", "captions_val.json")
    for name in (*names, "grounding_train.json", "grounding_val.json"):
        assert name in out and (tmp_path / "s" / name).is_file(), name
