"""COCO mask AP (pycocotools segm) on synthetic shapes: ground truth as predictions scores 1.0,
and the wrapper equals a direct COCOeval on the same predictions."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch

from glip.data import generate_synthetic
from glip.data.masks import annotation_mask
from glip.evaluation import COCO_METRICS, evaluate_coco
from glip.structures import Detections


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    data = generate_synthetic(tmp_path_factory.mktemp("segm"), num_train=4, num_val=0, image_size=(64, 96), seed=2)
    return json.loads(data.train_json.read_text())


def _results(gt: dict, shift: int = 0, seed: int = 0) -> list[dict]:
    """Each ground-truth mask as a prediction (optionally shifted right by ``shift`` pixels)."""
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    out = []
    for image_id, (h, w) in sizes.items():
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
        masks = np.stack([annotation_mask(a, h, w) for a in anns])
        masks = np.roll(masks, shift, axis=2)
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        )
        det = Detections(
            boxes.float(),
            torch.from_numpy(rng.uniform(0.5, 1.0, len(anns))).float(),
            torch.tensor([a["category_id"] for a in anns]),
            [],
            (h, w),
            torch.from_numpy(masks),
        )
        out += det.to_coco(image_id)
    return out


def test_ground_truth_as_predictions_scores_one(gt) -> None:
    metrics = evaluate_coco(gt, _results(gt), iou_type="segm")
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


@pytest.mark.parametrize("chunk", [1, 16])  # categories evaluated at a time: the same numbers
def test_segm_equals_pycocotools(gt, chunk) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = _results(gt, shift=3, seed=1)
    gt_before = copy.deepcopy(gt)
    ours = evaluate_coco(gt, results, iou_type="segm", category_chunk=chunk)
    assert gt == gt_before  # the polygons turned into RLEs in pycocotools' copies only
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = copy.deepcopy(gt)
        api.createIndex()
        dets = copy.deepcopy(results)
        for d in dets:
            del d["bbox"]
        ev = COCOeval(api, api.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [ours[k] for k in COCO_METRICS] == [float(v) for v in ev.stats]
    assert 0.0 < ours["AP"] < 1.0  # the shift costs AP: not a degenerate case
    assert evaluate_coco(gt, results)["AP"] != ours["AP"]  # bbox AP scores the (unshifted) boxes


def test_segm_needs_masks(gt) -> None:
    results = _results(gt)
    for r in results:
        del r["segmentation"]
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_coco(gt, results, iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_coco(gt, results, iou_type="keypoints")


def test_results_file_and_cli_score_masks(gt, tmp_path, capsys) -> None:
    from glip.cli import main
    from glip.tools.evaluate import score_results_file

    ann, res = tmp_path / "gt.json", tmp_path / "results.json"
    ann.write_text(json.dumps(gt))
    res.write_text(json.dumps(_results(gt)))
    both = score_results_file("coco", ann, res, tmp_path / "a", iou_types=("bbox", "segm"))
    assert both["segm_AP"] == pytest.approx(1.0) and "AP" in both
    rc = main(["evaluate", "--task", "coco", "--ann", str(ann), "--results", str(res), "--iou-type", "segm",
               "--out", str(tmp_path / "b")])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "segm_AP" in out
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["segm_AP"] == pytest.approx(1.0)
    rc = main(["evaluate", "--task", "flickr", "--ann", str(ann), "--results", str(res), "--iou-type", "segm"])
    err = capsys.readouterr().err
    assert rc == 1 and "coco and lvis" in err and len(err.strip().splitlines()) == 1
