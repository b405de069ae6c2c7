"""ATSS assignment: every internal of the official training fixture, hand-computed cases, empty targets."""

from __future__ import annotations

import functools

import pytest
import torch

from glip.modeling.heads.grounding.anchors import AnchorGenerator
from glip.modeling.heads.grounding.assigner import ATSSAssigner, centerness_targets
from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.ops.boxes import box_iou
from glip.structures import GroundingTargets
from tests.conftest import OFFICIAL_TRAIN, TINY_CONFIGS, require_fixtures

# Centerness targets (a sqrt of products of ratios, values in (0, 1]) match the official ones
# bit for bit on the AVX2 / AVX-512 machines the fixtures were checked on, and within one
# float32 ulp on a Xeon with AVX-512 FP16 (5 of 36 values 5.96e-8 apart, 2026-12-06): torch's
# vectorised kernels differ by CPU. Two ulps of 1.0 allowed, no absolute slack.
CENTERNESS_ULP = {"rtol": 2.4e-7, "atol": 0.0}


@functools.lru_cache(maxsize=2)
def load_train_case(config: str) -> dict:
    require_fixtures()
    return torch.load(OFFICIAL_TRAIN / config / "train_case.pth", weights_only=True)


def fixture_targets(case: dict) -> list[GroundingTargets]:
    """The fixture's per-image targets: resized boxes and the collated (binary) positive-map rows."""
    targets, offset = [], 0
    for boxes, labels in zip(case["target_boxes_resized_xyxy"], case["target_labels"]):
        num = boxes.shape[0]
        targets.append(GroundingTargets(boxes, case["positive_map"][offset : offset + num], labels))
        offset += num
    assert offset == case["positive_map"].shape[0]
    return targets


def _assigner() -> ATSSAssigner:
    return ATSSAssigner(BoxCoder())


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_anchors_match_the_fixture(config: str) -> None:
    case = load_train_case(config)
    sizes = [tuple(r.shape[-2:]) for r in case["head_outputs"]["bbox_reg"]]
    ours = AnchorGenerator()(sizes)
    for a, b in zip(ours, case["anchors_per_level"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_every_atss_internal_matches_official(config: str) -> None:
    case = load_train_case(config)
    anchors = case["anchors_per_level"]
    flat_anchors = torch.cat(anchors)
    coder = BoxCoder()
    for image, (target, ref) in enumerate(zip(fixture_targets(case), case["atss"]["per_image"])):
        got = _assigner()(anchors, target)
        assert [a.shape[0] for a in anchors] == ref["num_anchors_per_level"]
        assert torch.equal(box_iou(flat_anchors, target.boxes, offset=1), ref["anchor_gt_iou"])
        # Candidates: same anchors in the same order, same IoUs and statistics, bit for bit.
        assert torch.equal(got.candidate_idxs, ref["candidate_idxs_per_gt"])
        assert torch.equal(got.candidate_ious, ref["candidate_ious"])
        assert torch.equal(got.iou_mean, ref["iou_mean_per_gt"])
        assert torch.equal(got.iou_std, ref["iou_std_per_gt"])
        assert torch.equal(got.iou_threshold, ref["iou_thresh_per_gt"])
        assert torch.equal(got.candidate_iou_ok, ref["candidate_is_pos_iou"])
        assert torch.equal(got.candidate_inside, ref["candidate_is_in_gt"])
        assert torch.equal(got.candidate_positive, ref["candidate_is_pos_final"])
        # Decisions.
        assert torch.equal(got.matched_gt, ref["anchor_assigned_gt"])
        assert torch.equal(torch.nonzero(got.positive).squeeze(1), ref["positive_anchor_indices"])
        pos = got.positive
        assert torch.equal(got.matched_iou[pos], ref["anchor_assigned_iou"][pos])
        assert (ref["anchor_assigned_iou"][~pos] == -1e8).all()  # the official -INF sentinel
        labels = torch.where(pos, target.labels[got.matched_gt.clamp(min=0)], 0)
        assert torch.equal(labels, ref["anchor_cls_labels"])
        # Regression targets: identical on positives; the official code fills background
        # anchors with encode(box 0), which nothing reads; ours are 0 there.
        reg_ref = ref["regression_targets_all_anchors"]
        assert torch.equal(got.regression_targets[pos], reg_ref[pos])
        assert torch.equal(
            reg_ref[~pos], coder.encode(target.boxes[:1].expand(int((~pos).sum()), 4), flat_anchors[~pos])
        )
        assert (got.regression_targets[~pos] == 0).all() and (got.centerness_targets[~pos] == 0).all()
        # Token targets (binary) including the [NoObj] row of background anchors.
        assert torch.equal(got.token_targets.bool(), case["atss"]["token_labels_stacked_bool"][image])
        assert torch.equal(
            got.token_targets[~pos].nonzero()[:, 1].unique(), case["atss"]["token_labels_unmatched_row_nonzero"]
        )

    # Batch level: positives in flattened order, regression targets bit for bit, centerness
    # targets within CENTERNESS_ULP (see there).
    batch = [_assigner()(anchors, t) for t in fixture_targets(case)]
    positive = torch.cat([a.positive for a in batch])
    assert torch.equal(torch.nonzero(positive).squeeze(1), case["atss"]["pos_inds"])
    got = torch.cat([a.centerness_targets for a in batch])[positive]
    torch.testing.assert_close(got, case["atss"]["centerness_targets"], **CENTERNESS_ULP)
    assert torch.equal(torch.cat([a.regression_targets for a in batch])[positive], case["atss"]["reg_targets_pos"])


def test_centerness_targets_of_official_positives() -> None:
    case = load_train_case(TINY_CONFIGS[0])
    atss = case["atss"]
    got = centerness_targets(atss["reg_targets_pos"], atss["anchors_pos"], BoxCoder())
    torch.testing.assert_close(got, atss["centerness_targets"], **CENTERNESS_ULP)


def _one_level(*boxes: list[float]) -> list[torch.Tensor]:
    return [torch.tensor(boxes, dtype=torch.float32)]


def _targets(boxes: list[list[float]], num_tokens: int = 4) -> GroundingTargets:
    pmap = torch.zeros((len(boxes), num_tokens), dtype=torch.bool)
    for i in range(len(boxes)):
        pmap[i, i] = True
    return GroundingTargets(torch.tensor(boxes, dtype=torch.float32), pmap)


def test_exact_anchor_is_positive_with_unit_centerness() -> None:
    # IoU (+1 convention) of box [0, 0, 9, 9] with the anchors: 1, 0, 0. Threshold
    # 1/3 + sqrt(1/3) = 0.911; the centre (4.5, 4.5) is inside by 4.5 px.
    anchors = _one_level([0, 0, 9, 9], [10, 0, 19, 9], [20, 0, 29, 9])
    got = ATSSAssigner(BoxCoder(), topk=3)(anchors, _targets([[0, 0, 9, 9]]))
    assert got.positive.tolist() == [True, False, False]
    assert got.iou_threshold.item() == pytest.approx(1 / 3 + (1 / 3) ** 0.5, rel=1e-6)
    assert got.regression_targets[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert got.centerness_targets.tolist() == [1.0, 0.0, 0.0]
    assert got.token_targets.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]  # [NoObj] = last token


def test_threshold_uses_the_unbiased_std() -> None:
    # Box [0, 0, 9, 9]; anchors shifted right by 1, 2, 4 px have IoUs 9/11, 2/3, 3/7.
    # mean + unbiased std = 0.8342 > 9/11: nothing is positive. A population std
    # (0.7982) would make the first anchor positive.
    anchors = _one_level([1, 0, 10, 9], [2, 0, 11, 9], [4, 0, 13, 9])
    got = ATSSAssigner(BoxCoder(), topk=3)(anchors, _targets([[0, 0, 9, 9]]))
    ious = torch.tensor([9 / 11, 2 / 3, 3 / 7], dtype=torch.float64)
    assert got.candidate_ious[:, 0].double().tolist() == pytest.approx(ious.tolist(), rel=1e-6)
    assert got.iou_threshold.item() == pytest.approx((ious.mean() + ious.std()).item(), rel=1e-6)
    assert got.candidate_inside.all() and not got.positive.any()


def test_centre_must_be_inside_by_more_than_the_margin() -> None:
    # The first anchor passes the IoU test (0.52 against a threshold of 0.47), but its
    # centre x = 14.5 is 0, 0.005 and 0.02 px inside the box's right edge.
    anchors = _one_level([0, 0, 29, 29], [100, 0, 129, 29], [200, 0, 229, 29])
    for right, inside in ((14.5, False), (14.505, False), (14.52, True)):
        got = ATSSAssigner(BoxCoder(), topk=3)(anchors, _targets([[0, 0, right, 29]]))
        assert got.candidate_iou_ok[:, 0].tolist() == [True, False, False]
        assert got.positive.tolist() == [inside, False, False]


def test_candidates_are_taken_per_level() -> None:
    level0 = torch.tensor([[x, 0, x + 7, 7] for x in range(0, 40, 8)], dtype=torch.float32)  # 5 anchors
    level1 = torch.tensor([[x, 0, x + 15, 15] for x in range(0, 48, 16)], dtype=torch.float32)  # 3 anchors
    got = ATSSAssigner(BoxCoder(), topk=2)([level0, level1], _targets([[0, 0, 14, 15]]))
    # Two nearest per level, nearest first; level-1 indices are offset by 5.
    assert got.candidate_idxs[:, 0].tolist() == [0, 1, 5, 6]
    assert got.positive.nonzero().squeeze(1).tolist() == [5]


def test_overlapping_boxes_take_the_highest_iou_and_first_on_ties() -> None:
    anchors = _one_level([0, 0, 9, 9], [100, 100, 109, 109], [200, 0, 209, 9])
    # Both boxes have the first anchor as their only positive; box 1 fits it better.
    got = ATSSAssigner(BoxCoder(), topk=3)(anchors, _targets([[0, 0, 11, 11], [0, 0, 9, 10]]))
    assert got.matched_gt.tolist() == [1, -1, -1]
    assert got.token_targets[0].tolist() == [0, 1, 0, 0]
    # Identical boxes: the lower index wins.
    got = ATSSAssigner(BoxCoder(), topk=3)(anchors, _targets([[0, 0, 9, 9], [0, 0, 9, 9]]))
    assert got.matched_gt.tolist() == [0, -1, -1]


def test_matches_a_per_box_loop_reference() -> None:
    """Random boxes on a real anchor grid against a plain per-box loop (same float32 arithmetic)."""
    gen = torch.Generator().manual_seed(0)
    anchors = AnchorGenerator()([(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)])
    xy = torch.rand((12, 2), generator=gen) * torch.tensor([120.0, 100.0])
    wh = 8 + torch.rand((12, 2), generator=gen) * 60
    boxes = torch.cat((xy, xy + wh), dim=1)
    target = GroundingTargets(boxes, torch.eye(12, 16, dtype=torch.bool))
    got = _assigner()(anchors, target)

    flat = torch.cat(anchors)
    ious = box_iou(flat, boxes, offset=1)
    centres = (flat[:, :2] + flat[:, 2:]) / 2
    best = torch.full((flat.shape[0],), -1.0)
    owner = torch.full((flat.shape[0],), -1)
    for g in range(boxes.shape[0]):
        gc = (boxes[g, :2] + boxes[g, 2:]) / 2
        dist = (centres - gc).pow(2).sum(-1).sqrt()
        cand, start = [], 0
        for level in anchors:
            n = level.shape[0]
            cand.append(dist[start : start + n].topk(min(9, n), largest=False).indices + start)
            start += n
        cand = torch.cat(cand)
        thr = ious[cand, g].mean() + ious[cand, g].std()
        for i in cand.tolist():
            cx, cy = centres[i].tolist()
            margin = min(
                cx - boxes[g, 0].item(), cy - boxes[g, 1].item(), boxes[g, 2].item() - cx, boxes[g, 3].item() - cy
            )
            if ious[i, g] >= thr and margin > 0.01 and ious[i, g] > best[i]:
                best[i], owner[i] = ious[i, g], g
    assert got.positive.any()
    assert torch.equal(got.matched_gt, owner)


def test_image_without_boxes_is_all_background() -> None:
    anchors = AnchorGenerator()([(4, 6), (2, 3), (1, 2), (1, 1), (1, 1)])
    got = _assigner()(anchors, GroundingTargets.empty(8))
    n = sum(a.shape[0] for a in anchors)
    assert not got.positive.any() and (got.matched_gt == -1).all()
    assert got.regression_targets.shape == (n, 4) and got.centerness_targets.shape == (n,)
    assert got.token_targets.shape == (n, 8) and (got.token_targets[:, -1] == 1).all()
    assert got.token_targets[:, :-1].sum() == 0
    assert got.candidate_idxs.shape == (9 + 6 + 2 + 1 + 1, 0)


def test_runs_without_gradients() -> None:
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0]], requires_grad=True)
    anchors = _one_level([0, 0, 9, 9], [10, 0, 19, 9], [20, 0, 29, 9])
    got = ATSSAssigner(BoxCoder(), topk=3)(anchors, GroundingTargets(boxes, torch.ones(1, 2)))
    assert got.positive.any()
    assert not got.regression_targets.requires_grad


def test_targets_validate_their_shapes_and_labels() -> None:
    with pytest.raises(ValueError, match=r"\[G, 4\]"):
        GroundingTargets(torch.zeros(3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="positive_map"):
        GroundingTargets(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="label"):
        GroundingTargets(torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([0]))
    # A normalised map (as the official dataset makes it) is binarised as the collator does.
    t = GroundingTargets(torch.zeros(1, 4), torch.tensor([[0.0, 0.4999998, 0.4999998, 0.0]]))
    assert t.positive_map.tolist() == [[False, True, True, False]]
