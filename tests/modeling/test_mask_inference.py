"""Masks at inference: Detections.masks in original-image pixels from GLIP.predict and the
Predictor; a model without a mask head asked for masks is a one-line error naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import glip
from glip.api import Predictor
from glip.modeling.glip import MasksUnavailableError
from glip.ops.masks import box_extent, paste_masks
from glip.structures import Detections
from tests.golden import case


@pytest.fixture(scope="module")
def models():
    """The golden tiny GLIP without and with a mask head (same weights elsewhere)."""
    from transformers import BertConfig

    from glip.config import load_config
    from glip.modeling.build import build_model
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    plain = case.build_tiny_glip()
    cfg = load_config(case.CONFIG_FILE, ["model.heads.mask.enabled=true", "name=tiny-mask"])
    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    torch.manual_seed(0)
    masked = build_model(cfg, BertConfig(**case._TINY_BERT), tokenizer)
    missing, unexpected = masked.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("heads.mask.") for k in missing)
    for model in (plain, masked):  # a few detections keep the pasting cheap
        model.postprocessor.detections_per_img = 12
    return plain, masked.eval()


def test_masks_come_with_the_same_detections(models) -> None:
    plain, masked = models
    image = case.golden_image()
    boxes_only = masked.predict(image, case.PROMPT, threshold=0.0)
    assert boxes_only.masks is None
    det = masked.predict(image, case.PROMPT, threshold=0.0, masks=True)
    assert len(det) > 0 and det.masks is not None
    assert det.masks.shape == (len(det), *case.IMAGE_HW) and det.masks.dtype == torch.bool
    torch.testing.assert_close(det.boxes, boxes_only.boxes)
    torch.testing.assert_close(det.scores, plain.predict(image, case.PROMPT, threshold=0.0).scores)


def test_masks_are_in_original_pixels_inside_their_boxes(models) -> None:
    _, masked = models
    small = np.asarray(
        Image.fromarray(case.golden_image()).resize((64, 48), Image.BILINEAR)
    )  # upscaled 2x by the model
    det = masked.predict(small, case.PROMPT, threshold=0.0, masks=True)
    assert det.masks.shape == (len(det), 48, 64)
    for box, mask in zip(det.boxes, det.masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs):  # a mask never leaves its box's extent
            x1, y1, x2, y2 = box.tolist()
            assert xs.min() >= int(x1) and ys.min() >= int(y1) and xs.max() <= x2 + 1 and ys.max() <= y2 + 1


def test_masks_equal_the_head_pasted_into_the_image(models) -> None:
    _, masked = models
    image = case.golden_image()
    tokens = masked.tokenize(case.PROMPT)
    from glip.structures import ImageBatch

    tensor, size = masked.preprocessing(image)
    batch = ImageBatch.from_tensors([tensor], masked.preprocessing.size_divisibility)
    (det,) = masked.detect(batch, tokens, original_sizes=[size], masks=True)
    with torch.no_grad():
        out = masked(batch, tokens.input_ids, tokens.attention_mask)
        token_map = tokens.positive_map[det.labels - 1] > 0
        (probs,) = masked.heads["mask"].predict(out.heads["mask"], [det.boxes], [token_map])
    # No resize here (96 x 128 is the test size): the boxes are already in original pixels.
    assert torch.equal(det.masks, paste_masks(probs, box_extent(det.boxes), size))


def test_predictor_masks_and_chunked_prompts(models) -> None:
    _, masked = models
    image = case.golden_image()
    predictor = Predictor(masked, masks=True)
    det = predictor.predict(image, case.PROMPT, threshold=0.0)
    assert det.masks is not None and det.masks.shape[0] == len(det)
    chunked = predictor.predict(image, case.PROMPT, threshold=0.0, chunk_size=1)  # one phrase per pass
    assert chunked.masks is not None and chunked.masks.shape == (len(chunked), *case.IMAGE_HW)
    assert glip.predict(image, case.PROMPT, model=masked, threshold=0.5, masks=True).masks is not None


def test_masks_without_a_mask_head_name_the_model(models) -> None:
    plain, _ = models
    image = case.golden_image()
    for call in (
        lambda: plain.predict(image, case.PROMPT, masks=True),
        lambda: Predictor(plain, masks=True),
        lambda: glip.predict(image, case.PROMPT, model=plain, masks=True),
    ):
        with pytest.raises(MasksUnavailableError, match="model 'golden-tiny' has no mask head") as err:
            call()
        assert "\n" not in str(err.value)


def test_detections_carry_masks_through_selection() -> None:
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[1, 1, 1] = True
    det = Detections(torch.rand(3, 4), torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 2, 1]), [], (4, 5), masks)
    assert torch.equal(det.above(0.5).masks, masks[[0, 2]])
    assert torch.equal(det.sorted().masks, masks[[0, 2, 1]]) and torch.equal(det[1].masks, masks[1:2])
    assert det.to("cpu").masks is not None
    with pytest.raises(ValueError, match="masks of shape"):
        Detections(torch.rand(3, 4), torch.rand(3), torch.ones(3, dtype=torch.int64), [], (4, 5), masks[:2])


def test_detect_files_writes_rle_masks_and_fills(models, tmp_path) -> None:
    from glip.data.masks import annotation_mask
    from glip.tools.detect import detect_files
    from glip.utils.draw import draw_detections

    _, masked = models
    image = case.golden_image()
    path = tmp_path / "shapes.png"
    Image.fromarray(image).save(path)
    predictor = Predictor(masked, masks=True)
    (entry,) = detect_files(predictor, [str(path)], case.PROMPT, tmp_path / "out", threshold=0.0, masks=True)
    det = predictor.predict(image, case.PROMPT, threshold=0.0)
    assert len(entry["detections"]) == len(det) > 0
    for d, mask in zip(entry["detections"], det.masks):
        assert np.array_equal(annotation_mask({"segmentation": d["mask"]}, *case.IMAGE_HW), mask.numpy())
    assert (tmp_path / "out" / "shapes.png").is_file()
    saved = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert saved[0]["detections"][0]["mask"] == entry["detections"][0]["mask"]
    # Round trip through to_dict / from_dict keeps the masks; COCO results carry them as RLE.
    again = Detections.from_dict(det.to_dict())
    assert torch.equal(again.masks, det.masks)
    assert det.to_coco(1)[0]["segmentation"] == entry["detections"][0]["mask"]
    # The fill: a masked pixel moves toward the label's colour, an unmasked one is unchanged.
    flat = np.full((40, 40, 3), 100, dtype=np.uint8)
    m = np.zeros((1, 40, 40), dtype=bool)
    m[0, 5, 5] = True  # far from the box's outline and tag
    drawn = np.asarray(draw_detections(flat, [[20, 20, 39, 39]], [1], [""], m, mask_alpha=0.5))
    assert tuple(drawn[5, 5]) == (178, 114, 57)  # (100 + palette[1]) / 2, rounded
    assert tuple(drawn[5, 8]) == (100, 100, 100)


def test_evaluate_detection_scores_boxes_and_masks(models, tmp_path) -> None:
    from glip.data import generate_synthetic
    from glip.tools.evaluate import evaluate_detection

    _, masked = models
    data = generate_synthetic(tmp_path / "d", num_train=2, num_val=0, image_size=(96, 128), seed=1, max_objects=2)
    metrics = evaluate_detection(
        Predictor(masked, masks=True), data.train_json, data.image_dir, iou_types=("bbox", "segm"), progress=False,
        out_dir=tmp_path / "out",
    )  # fmt: skip
    assert {"AP", "AP50", "segm_AP", "segm_AP50"} <= set(metrics)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results and all("segmentation" in r for r in results)
