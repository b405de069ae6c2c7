"""The whole model against the official golden outputs (tests/README: fixtures)."""

from __future__ import annotations

import pytest
import torch

from glip.ops.boxes import box_iou
from glip.structures import ImageBatch
from glip.text import Prompt
from tests.conftest import CASES, TINY_CONFIGS, load_case

TOL = dict(atol=1e-4, rtol=1e-4)


def _assert_same_detections(boxes, scores, labels, ref: dict, box_atol: float = 1e-3, score_atol: float = 1e-5):
    """Final boxes compared as sets: each reference box has a match of the same label
    with IoU > 0.999, coordinates within ``box_atol`` and score within ``score_atol``."""
    rb, rs, rl = ref["bbox"], ref["fields"]["scores"], ref["fields"]["labels"]
    assert boxes.shape[0] == rb.shape[0], f"{boxes.shape[0]} boxes vs official {rb.shape[0]}"
    iou = box_iou(rb, boxes)
    iou[rl[:, None] != labels[None, :]] = -1
    best = iou.argmax(1)
    assert len(set(best.tolist())) == len(best), "two official boxes matched the same box"
    torch.testing.assert_close(boxes[best], rb, atol=box_atol, rtol=0)
    torch.testing.assert_close(scores[best], rs, atol=score_atol, rtol=0)
    assert torch.equal(labels[best], rl)


@pytest.mark.parametrize("config", TINY_CONFIGS)
@pytest.mark.parametrize("case", CASES)
def test_forward_reproduces_official_intermediates(tiny_model_factory, config, case):
    model = tiny_model_factory(config)
    c = load_case(config, case)
    images = ImageBatch(c["image_tensor"], [tuple(s) for s in c["image_sizes_field_hw"]])
    with torch.no_grad():
        out = model(images, c["input_ids"], c["attention_mask"])
        swin = model.backbone.body(c["image_tensor"])
    ref_lang = c["language_backbone_out"]
    torch.testing.assert_close(out.text.hidden, ref_lang["hidden"], **TOL)
    torch.testing.assert_close(out.text.embedded, ref_lang["embedded"], **TOL)
    torch.testing.assert_close(out.text.aggregate, ref_lang["aggregate"], **TOL)
    for ours, ref in zip(swin, c["swin_outputs"][1:]):
        torch.testing.assert_close(ours, ref, **TOL)
    assert len(out.features) == len(c["fpn_outputs"]) == 5
    for ours, ref in zip(out.features, c["fpn_outputs"]):
        torch.testing.assert_close(ours, ref, **TOL)
    for name, ref_list in [
        ("box_regression", c["head_bbox_reg"]),
        ("centerness", c["head_centerness"]),
        ("dot_product_logits", c["head_dot_product_logits"]),
    ]:
        for ours, ref in zip(getattr(out.head, name), ref_list):
            torch.testing.assert_close(ours, ref, **TOL)
    assert out.head.num_classes == c["head_cls_logits"][0].shape[1]
    for ours, ref in zip(out.anchors, c["anchors"]):
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)


@pytest.mark.parametrize("config", TINY_CONFIGS)
@pytest.mark.parametrize("case", CASES)
def test_detect_from_image_tensor_matches_official_predictions(tiny_model_factory, config, case):
    model = tiny_model_factory(config)
    c = load_case(config, case)
    images = ImageBatch(c["image_tensor"], [tuple(s) for s in c["image_sizes_field_hw"]])
    tokens = model.tokenize(Prompt.from_spans(c["caption"], c["tokens_positive_char_spans"]))
    (det,) = model.detect(images, tokens)
    ref = c["predictions"]["gpu_ml_nms_emulated"]["final_resized_image_coords"]
    _assert_same_detections(det.boxes, det.scores, det.labels, ref)


@pytest.mark.parametrize("config", TINY_CONFIGS)
@pytest.mark.parametrize("case", CASES)
def test_predict_from_raw_image_matches_official_demo(tiny_model_factory, config, case):
    model = tiny_model_factory(config)
    c = load_case(config, case)
    image = c["image_original_rgb_uint8"].numpy()
    det = model.predict(image, c["caption"], threshold=0.0)
    ref = c["predictions"]["gpu_ml_nms_emulated"]["final_original_image_coords"]
    _assert_same_detections(det.boxes, det.scores, det.labels, ref)
    assert det.image_size == tuple(c["image_size_original_hw"])
    assert torch.all(det.scores[:-1] >= det.scores[1:]), "sorted by score"
    names = c["label_to_entity"]
    assert det.phrases == [names[int(label)] for label in det.labels]
    # The demo's own threshold: scores strictly above it, sorted descending.
    low = c["predictions"]["gpu_ml_nms_emulated"]
    for key, value in low.items():
        if key.startswith("demo_thresholded_") and isinstance(value, dict) and "threshold" in value:
            kept = model.predict(image, c["caption"], threshold=float(value["threshold"]))
            assert len(kept) == value["bbox"].shape[0]
