"""Instance masks in the data: exact synthetic polygons, COCO polygon / RLE decoding, masks
carried through the dataset's resize and flip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from glip.data import CocoGroundingDataset, TrainTransform, generate_synthetic
from glip.data.masks import annotation_mask, has_segmentation, outline_polygons, resize_masks, segmentation_from_mask
from glip.data.od_to_grounding import SampleRNG


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic(
        tmp_path_factory.mktemp("masks"), num_train=6, num_val=0, image_size=(96, 128), seed=11,
        shapes=("circle", "square", "triangle", "diamond", "star"), max_objects=4,
    )  # fmt: skip


def test_synthetic_polygons_are_exact(shapes) -> None:
    data = json.loads(shapes.train_json.read_text())
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    files = {img["id"]: img["file_name"] for img in data["images"]}
    last: dict[int, dict] = {}
    for ann in data["annotations"]:
        h, w = sizes[ann["image_id"]]
        assert isinstance(ann["segmentation"], list) and all(len(p) >= 8 for p in ann["segmentation"])
        mask = annotation_mask(ann, h, w)
        ys, xs = np.nonzero(mask)
        # The polygon rasterises to the drawn shape: its pixel count and tight box are the annotation's.
        assert int(mask.sum()) == ann["area"]
        assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == ann["bbox"]
        last[ann["image_id"]] = ann
    for image_id, ann in last.items():  # the shape drawn last is fully visible: one flat colour
        pixels = np.asarray(Image.open(shapes.image_dir / files[image_id]).convert("RGB"))
        mask = annotation_mask(ann, *sizes[image_id])
        colours = np.unique(pixels[mask], axis=0)
        assert len(colours) == 1
        x, y, bw, bh = ann["bbox"]
        box = np.zeros_like(mask)
        box[y : y + bh, x : x + bw] = True
        outside = box & ~mask
        assert not (pixels[outside] == colours[0]).all(axis=1).any()


def test_outline_polygons_holes_and_diagonal_pieces() -> None:
    m = np.zeros((6, 7), dtype=bool)
    m[1:3, 1:4] = True
    m[3, 4] = True  # touches the block only at a corner: a second polygon
    polys = outline_polygons(m)
    assert polys == [[1, 1, 4, 1, 4, 3, 1, 3], [4, 3, 5, 3, 5, 4, 4, 4]]
    assert np.array_equal(annotation_mask({"segmentation": polys}, 6, 7), m)
    ring = np.zeros((5, 5), dtype=bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    assert outline_polygons(ring) is None
    seg = segmentation_from_mask(ring)
    assert isinstance(seg, dict) and isinstance(seg["counts"], str)
    assert np.array_equal(annotation_mask({"segmentation": seg}, 5, 5), ring)


def test_coco_polygon_and_rle_decoding() -> None:
    from pycocotools import mask as mask_utils

    m = np.zeros((8, 9), dtype=bool)
    m[2:5, 3:8] = True
    poly = {"segmentation": [[3, 2, 8, 2, 8, 5, 3, 5]]}
    assert np.array_equal(annotation_mask(poly, 8, 9), m)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    compressed = {"segmentation": {"size": [8, 9], "counts": rle["counts"].decode("ascii")}}
    assert np.array_equal(annotation_mask(compressed, 8, 9), m)
    # Uncompressed RLE (iscrowd annotations): column-major run lengths starting with zeros.
    flat = m.T.reshape(-1)
    runs, value, count = [], False, 0
    for v in flat.tolist():
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    assert np.array_equal(annotation_mask({"segmentation": {"size": [8, 9], "counts": runs}}, 8, 9), m)
    with pytest.raises(ValueError, match="RLE size"):
        annotation_mask(compressed, 9, 9)
    assert not has_segmentation({"segmentation": []}) and not has_segmentation({"bbox": [0, 0, 1, 1]})
    assert has_segmentation(poly) and has_segmentation(compressed)


def test_resize_and_flip_masks() -> None:
    m = torch.zeros(1, 4, 6, dtype=torch.bool)
    m[0, :2, :3] = True
    up = resize_masks(m, (8, 12))
    assert up[0, :4, :6].all() and not up[0, 4:].any() and not up[0, :, 6:].any()
    assert torch.equal(resize_masks(m, (4, 6), flip=True)[0], m[0].flip(-1))


def test_dataset_carries_masks_through_resize_and_flip(shapes, tmp_path, tokenizer) -> None:
    data = json.loads(shapes.train_json.read_text())
    first = data["annotations"][0]["image_id"]
    dropped = next(a for a in data["annotations"] if a["image_id"] == first)
    del dropped["segmentation"]  # a box without a mask
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    ds = CocoGroundingDataset(path, shapes.image_dir, tokenizer, TrainTransform([192], 400, 1.0), masks=True)
    for item in range(len(ds)):
        sample = ds.load(item, SampleRNG.from_seed(item))
        t = sample.targets
        assert sample.flipped and t.masks is not None and t.masks.shape[1:] == sample.image.shape[1:]
        for g in range(len(t)):
            if not t.has_mask[g]:
                assert not t.masks[g].any()
                continue
            ys, xs = torch.nonzero(t.masks[g], as_tuple=True)
            # The resized, flipped mask's extent agrees with the resized, flipped box within a pixel.
            x1, y1, x2, y2 = t.boxes[g].tolist()
            assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() - x2) <= 1.5
            assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() - y2) <= 1.5
    assert not ds.load(0, SampleRNG.from_seed(0)).targets.has_mask.all()
    plain = CocoGroundingDataset(path, shapes.image_dir, tokenizer, TrainTransform([192], 400, 1.0))
    assert plain.load(0, SampleRNG.from_seed(0)).targets.masks is None
