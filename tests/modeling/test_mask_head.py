"""The VL mask head: extractors, predictor, target matching, loss, gradcheck and the builder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glip.modeling.heads.base import LossInputs
from glip.modeling.heads.mask import (
    HourglassExtractor,
    MaskConvExtractor,
    MaskHead,
    MaskOutput,
    VLMaskPredictor,
    detector_proposals,
)
from glip.ops.masks import box_extent, crop_masks
from glip.ops.roi_align import multilevel_roi_align
from glip.structures import GroundingTargets
from glip.structures.outputs import HeadOutputs

C, D, T = 4, 6, 5
SCALES = (1 / 4, 1 / 8)


def _head(extractor: str = "conv", dtype=torch.float64, detections: int = 0, seed: int = 0) -> MaskHead:
    torch.manual_seed(seed)
    ext = MaskConvExtractor(C, [C, C]) if extractor == "conv" else HourglassExtractor(C, [C], depth=1, resolution=4)
    head = MaskHead(ext, VLMaskPredictor(C, C, D), SCALES, pooler_resolution=4, resolution=8, detections=detections)
    with torch.no_grad():  # the official init zeroes every bias: give them values so the test sees them
        for p in head.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape) * 0.3)
    return head.to(dtype)


def _output(batch: int = 2, dtype=torch.float64, seed: int = 1) -> MaskOutput:
    g = torch.Generator().manual_seed(seed)
    visual = [torch.randn(batch, C, 64 // int(1 / s), 64 // int(1 / s), generator=g, dtype=dtype) for s in SCALES]
    return MaskOutput(visual=visual, text=torch.randn(batch, T, D, generator=g, dtype=dtype))


def _targets(with_masks=(True, True), has_mask=None) -> list[GroundingTargets]:
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 10.0, 60.0, 28.0]])
    pmap = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:35, 6:25] = True
    masks[1, 12:27, 40:61] = True
    out = []
    for i, with_mask in enumerate(with_masks):
        flags = None if has_mask is None else has_mask[i]
        out.append(GroundingTargets(boxes + 2 * i, pmap, torch.tensor([1, 2]), masks if with_mask else None, flags))
    return out


def _inputs(targets, batch: int = 2) -> LossInputs:
    return LossInputs(
        targets=targets,
        anchors=[],
        text_mask=torch.ones(batch, T, dtype=torch.int64),
        assigned=None,  # type: ignore[arg-type] - the mask loss does not read the assignment
        num_pos_avg=1.0,
    )


def test_predictor_phrase_logits_equal_the_average_of_token_logits() -> None:
    torch.manual_seed(0)
    pred = VLMaskPredictor(C, C, D).double()
    with torch.no_grad():
        pred.bias_lang.normal_()
        pred.log_scale.fill_(0.3)
    x = torch.randn(3, C, 4, 4, dtype=torch.float64)
    text = torch.randn(2, T, D, dtype=torch.float64)
    index = torch.tensor([1, 0, 1])
    full = pred(x, text, index)  # [R, T, 8, 8]
    assert full.shape == (3, T, 8, 8)
    token_map = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    expected = torch.stack([full[r, token_map[r]].mean(0) for r in range(3)])
    torch.testing.assert_close(pred.phrase_logits(x, text, index, token_map), expected)
    # The official formula on one pixel and token.
    f = F.relu(pred.conv5_mask(x))[0, :, 2, 5]
    emb = F.normalize(text[1, 3], dim=-1)
    logit = f @ pred.dot_product_projection_text(emb / 2) / pred.log_scale.exp() + emb @ pred.bias_lang
    torch.testing.assert_close(full[0, 3, 2, 5], logit[0])


def test_official_init_and_names() -> None:
    pred = VLMaskPredictor(8, 8, 10).requires_grad_(False)
    assert float(pred.bias_lang.abs().sum()) == 0 and float(pred.conv5_mask.bias.abs().sum()) == 0
    assert float(pred.dot_product_projection_text.bias.abs().sum()) == 0 and float(pred.log_scale) == 0.0
    conv = MaskConvExtractor(8, [8, 8, 8, 8])
    assert [n for n, _ in conv.named_children()] == ["mask_fcn1", "mask_fcn2", "mask_fcn3", "mask_fcn4"]
    hg = HourglassExtractor(8, [8, 8], depth=1, resolution=14)
    assert hg(torch.randn(2, 8, 14, 14)).shape == (2, 8, 14, 14)
    assert hg.mask_hg1.low2.conv2.dilation == (3, 3)  # the official Residual's middle conv
    with pytest.raises(ValueError, match="cannot run on 14x14"):
        HourglassExtractor(8, [8], depth=2, resolution=14)
    with pytest.raises(ValueError, match="keeps the width"):
        HourglassExtractor(8, [16])


def test_loss_equals_a_hand_computation_and_skips_boxes_without_masks() -> None:
    head = _head()
    out = _output()
    # Image 0: masks for both boxes; image 1: the second box has no mask.
    targets = _targets(has_mask=[None, torch.tensor([True, False])])
    proposals = [t.boxes.clone() for t in targets]
    proposals[0] = torch.cat([proposals[0], torch.tensor([[5.0, 7.0, 31.0, 42.0], [0.0, 0.0, 3.0, 3.0]])])
    got = head.prepare_targets(proposals, targets)
    # image 0: its 2 GT boxes + the near-duplicate of box 0; the far box is negative. image 1: box 0 only.
    assert [len(b) for b in got.boxes] == [3, 1]
    assert got.image_index.tolist() == [0, 0, 0, 1]
    assert got.token_map.tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0]]
    # The loss: BCE of the pooled, extracted, predicted logits against the cropped masks.
    loss = head.loss(out, _inputs(targets))["loss_mask"]
    boxes = [targets[0].boxes, targets[1].boxes[:1]]  # ground truth only (detections = 0)
    pooled = multilevel_roi_align(out.visual, boxes, 4, SCALES, 0)
    tmap = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    logits = head.predictor.phrase_logits(head.extractor(pooled), out.text, torch.tensor([0, 0, 1]), tmap)
    masks = torch.cat(
        [
            crop_masks(targets[0].masks, torch.tensor([0, 1]), box_extent(boxes[0]), 8),
            crop_masks(targets[1].masks, torch.tensor([0]), box_extent(boxes[1]), 8),
        ]
    )
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, masks.double()))


def test_batch_loss_is_the_region_weighted_mean_of_single_images() -> None:
    head = _head()
    out = _output()
    targets = _targets()
    both = head.loss(out, _inputs(targets))["loss_mask"]
    singles = [
        head.loss(MaskOutput([v[b : b + 1] for v in out.visual], out.text[b : b + 1]), _inputs([targets[b]], 1))
        for b in range(2)
    ]
    torch.testing.assert_close(both, (singles[0]["loss_mask"] + singles[1]["loss_mask"]) / 2)


def test_no_mask_anywhere_gives_a_connected_zero() -> None:
    head = _head()
    loss = head.loss(_output(), _inputs(_targets(with_masks=(False, False))))["loss_mask"]
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    flags = _targets(has_mask=[torch.tensor([False, False])] * 2)
    assert float(head.loss(_output(), _inputs(flags))["loss_mask"]) == 0.0


@pytest.mark.parametrize("extractor", ["conv", "hourglass"])
def test_head_gradcheck_float64(extractor: str) -> None:
    """The whole loss (pooling, extractor, predictor, phrase average, BCE) in the maps and the text."""
    torch.manual_seed(0)
    ext = MaskConvExtractor(2, [2]) if extractor == "conv" else HourglassExtractor(2, [2], depth=1, resolution=2)
    head = MaskHead(ext, VLMaskPredictor(2, 2, 3), SCALES, pooler_resolution=2, resolution=4).double()
    with torch.no_grad():
        for p in head.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape) * 0.3)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 3:12, 2:9] = True
    masks[1, 14:30, 10:31] = True
    target = GroundingTargets(
        torch.tensor([[1.0, 2.0, 10.0, 13.0], [9.0, 12.0, 31.0, 30.0]]),
        torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool),
        masks=masks,
    )
    inputs = _inputs([target], 1)
    g = torch.Generator().manual_seed(5)
    args = tuple(
        torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
        for shape in ((1, 2, 8, 8), (1, 2, 4, 4), (1, 3, 3))
    )

    def fn(p3, p4, text):
        return head.loss(MaskOutput([p3, p4], text), inputs)["loss_mask"]

    assert torch.autograd.gradcheck(fn, args)


def test_detector_proposals_decode_the_best_anchors() -> None:
    # Two levels of 2x2 anchors; deltas 0 decode to the anchors themselves.
    anchors = [
        torch.tensor([[0, 0, 7, 7], [8, 0, 15, 7], [0, 8, 7, 15], [8, 8, 15, 15.0]]),
        torch.tensor([[0, 0, 15, 15.0]]),
    ]
    logits = [torch.full((1, 4, 2), -5.0), torch.full((1, 1, 2), -5.0)]
    logits[0][0, 2, 1] = 5.0  # anchor (0, 8, 7, 15) is the best; token 1 masked out below for the other level
    logits[1][0, 0, 1] = 9.0
    head = HeadOutputs(
        box_regression=[torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 1, 1)],
        centerness=[torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)],
        dot_product_logits=logits,
        num_classes=80,
    )
    text_mask = torch.tensor([[1, 0]])
    (boxes,) = detector_proposals(head, anchors, text_mask, (16, 16), pre_nms_top_n=2, post_nms_top_n=5, nms_thresh=0.6)
    # The level-1 anchor's only strong token is masked out; the best two are the level-0 anchor 2 and one other.
    assert boxes[0].tolist() == [0, 8, 7, 15]
    assert boxes.shape == (2, 4)


def test_detector_boxes_join_the_ground_truth_as_proposals() -> None:
    head = _head(detections=10)
    targets = _targets()
    anchors = [
        torch.tensor([[4.0, 6.0, 30.0, 40.0]]).repeat(256, 1),
        torch.tensor([[36.0, 10.0, 60.0, 28.0]]).repeat(64, 1),
    ]
    grounding = HeadOutputs(
        box_regression=[torch.zeros(2, 4, 16, 16), torch.zeros(2, 4, 8, 8)],
        centerness=[torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 8, 8)],
        dot_product_logits=[torch.zeros(2, 256, T), torch.zeros(2, 64, T)],
        num_classes=80,
    )
    inputs = _inputs(targets)
    inputs.anchors = anchors
    inputs.outputs = {"grounding": grounding}
    props = head.proposals(inputs)
    # NMS leaves one copy of each anchor box; the two ground-truth boxes follow.
    assert [len(p) for p in props] == [4, 4]
    torch.testing.assert_close(props[1][2:], targets[1].boxes)


def test_builder_registers_the_head_off_by_default() -> None:
    from transformers import BertConfig

    from glip.config import GLIPConfig, load_config
    from glip.modeling.build import HEAD_BUILDERS, build_heads
    from tests.golden.case import _TINY_BERT, CONFIG_FILE

    assert "mask" in HEAD_BUILDERS and GLIPConfig().model.heads.mask.enabled is False
    cfg = load_config(CONFIG_FILE)
    assert "mask" not in build_heads(cfg, BertConfig(**_TINY_BERT))
    for extractor in ("MaskRCNNFPNFeatureExtractor", "HourglassFPNFeatureExtractor"):
        cfg = load_config(
            CONFIG_FILE, ["model.heads.mask.enabled=true", f"model.heads.mask.feature_extractor={extractor}"]
        )
        head = build_heads(cfg, BertConfig(**_TINY_BERT))["mask"]
        assert isinstance(head, MaskHead) and head.scales == (1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128)
        assert head.predictor.dot_product_projection_text.in_features == 32
    bad = load_config(CONFIG_FILE, ["model.heads.mask.enabled=true", "model.heads.mask.feature_extractor=x"])
    with pytest.raises(ValueError, match="feature_extractor"):
        build_heads(bad, BertConfig(**_TINY_BERT))


def test_official_mask_head_keys_map_onto_the_head() -> None:
    from glip.hub.official_keys import official_key_to_glip

    head = MaskHead(HourglassExtractor(4, [4, 4], depth=1, resolution=4), VLMaskPredictor(4, 4, 6), SCALES, 2, 0, 4)
    conv = MaskConvExtractor(4, [4, 4, 4, 4])
    ours = {f"heads.mask.{k}" for k in head.state_dict()} | {f"heads.mask.extractor.{k}" for k in conv.state_dict()}
    official = [  # names of the official ROIMaskHead's parameters (hourglass.py, roi_mask_predictors.py)
        "roi_heads.mask.feature_extractor.mask_hg2.up1.conv1.weight",
        "roi_heads.mask.feature_extractor.mask_hg1.low2.conv2.bias",
        "roi_heads.mask.feature_extractor.mask_hg1.low3.conv3.weight",
        "roi_heads.mask.feature_extractor.mask_fcn4.weight",
        "roi_heads.mask.predictor.conv5_mask.weight",
        "roi_heads.mask.predictor.dot_product_projection_text.bias",
        "roi_heads.mask.predictor.log_scale",
        "roi_heads.mask.predictor.bias_lang",
    ]
    for key in official:
        assert official_key_to_glip(key, 3) in ours, key
