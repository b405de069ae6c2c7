"""LVIS mask AP: ground truth as predictions scores 1.0, equal to the LVIS API's segm
evaluation on the same predictions, through the runner and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from glip.data import generate_synthetic
from glip.data.masks import annotation_mask
from glip.evaluation.lvis import evaluate_lvis
from glip.structures import Detections


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("lvis"), num_train=6, num_val=0, image_size=(64, 96), seed=4)


def _lvis(coco: dict, seed: int = 0) -> dict:
    """The synthetic COCO json with LVIS's federated fields: frequencies r/c/f in turn, some
    absent categories verified absent, some present ones not exhaustively annotated."""
    rng = np.random.default_rng(seed)
    cats = [dict(c, frequency="rcf"[i % 3]) for i, c in enumerate(coco["categories"])]
    images = []
    for img in coco["images"]:
        present = {a["category_id"] for a in coco["annotations"] if a["image_id"] == img["id"]}
        absent = [c["id"] for c in cats if c["id"] not in present]
        images.append(dict(
            img, neg_category_ids=[c for c in absent if rng.random() < 0.5],
            not_exhaustive_category_ids=[c for c in sorted(present) if rng.random() < 0.3],
        ))  # fmt: skip
    return dict(coco, images=images, categories=cats)


def _detections(gt: dict, image: dict, shift: int, rng: np.random.Generator) -> Detections:
    h, w = image["height"], image["width"]
    anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
    masks = np.stack([annotation_mask(a, h, w) for a in anns]) if anns else np.zeros((0, h, w), dtype=bool)
    masks = np.roll(masks, shift, axis=2)
    boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)]).reshape(-1, 4)
    scores = torch.from_numpy(rng.uniform(0.5, 1.0, len(anns))).float()
    labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    return Detections(boxes.float(), scores, labels, [], (h, w), torch.from_numpy(masks))


def _results(gt: dict, shift: int = 0, seed: int = 0, false_positives: bool = False) -> list[dict]:
    """Each ground-truth mask as a prediction (shifted right by ``shift`` pixels); with
    ``false_positives``, every image also gets another image's masks under random categories."""
    rng = np.random.default_rng(seed)
    out = []
    for image in gt["images"]:
        out += _detections(gt, image, shift, rng).to_coco(image["id"])
    if false_positives:
        cats = [c["id"] for c in gt["categories"]]
        for i, image in enumerate(gt["images"]):
            other = gt["images"][(i + 1) % len(gt["images"])]
            for r in _detections(gt, other, 0, rng).to_coco(image["id"]):
                out.append(dict(r, category_id=int(rng.choice(cats)), score=float(rng.uniform(0.0, 0.6))))
    return out


def _reference(api, gt: dict, results: list[dict], tmp_path) -> dict[str, float]:
    """The LVIS API's segm AP on the official form of the results (no box: area = mask area)."""
    LVIS, LVISResults, LVISEval = api
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    lvis_gt = LVIS(str(path))
    dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    evaluator = LVISEval(lvis_gt, LVISResults(lvis_gt, dets, max_dets=-1), iou_type="segm")
    evaluator.params.max_dets = -1
    evaluator.run()
    return {k: float(v) for k, v in evaluator.results.items() if k.startswith("AP")}


def test_ground_truth_as_predictions_scores_one(data) -> None:
    gt = _lvis(json.loads(data.train_json.read_text()))
    metrics = evaluate_lvis(gt, _results(gt), iou_type="segm")
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert all(metrics[k] in (pytest.approx(1.0), -1.0) for k in ("APr", "APc", "APf"))


@pytest.mark.parametrize("seed", [0, 1])
def test_segm_equals_lvis_api(lvis_api, data, tmp_path, seed) -> None:
    gt = _lvis(json.loads(data.train_json.read_text()), seed)
    results = _results(gt, shift=2 + seed, seed=seed, false_positives=True)
    ours = evaluate_lvis(gt, results, iou_type="segm")
    ref = _reference(lvis_api, gt, results, tmp_path)
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 0.0 < ours["AP"] < 1.0  # the shift and the false positives cost AP: not a degenerate case
    assert evaluate_lvis(gt, results)["AP"] != ours["AP"]  # box AP scores the (unshifted) boxes


def test_segm_needs_masks_on_both_sides(data) -> None:
    gt = _lvis(json.loads(data.train_json.read_text()))
    results = _results(gt)
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_lvis(gt, [{k: v for k, v in r.items() if k != "segmentation"} for r in results], iou_type="segm")
    boxes_only = dict(gt, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in gt["annotations"]])
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_lvis(boxes_only, results, iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_lvis(gt, results, iou_type="keypoints")


class _MaskOracle:
    """Each image's ground-truth masks (and boxes) for the prompt's phrases."""

    def __init__(self, gt: dict, image_dir) -> None:
        self.by_file = {str(image_dir / img["file_name"]): img for img in gt["images"]}
        self.gt = gt
        self.names = {c["id"]: c["name"] for c in gt["categories"]}

    def iter_predict(self, images, prompt, **kwargs):
        assert kwargs.get("masks") is True
        from glip.text import parse_prompt

        phrases = parse_prompt(prompt).phrases
        for i, path in enumerate(images):
            image = self.by_file[str(path)]
            det = _detections(self.gt, image, 0, np.random.default_rng(0))
            names = [self.names[int(c)] for c in det.labels]
            keep = torch.tensor([n in phrases for n in names], dtype=torch.bool)
            labels = torch.tensor([phrases.index(n) + 1 for n in names if n in phrases], dtype=torch.int64)
            yield i, Detections(det.boxes[keep], det.scores[keep], labels, [], det.image_size, det.masks[keep])


def test_runner_and_cli_score_lvis_masks(data, tmp_path, capsys) -> None:
    from glip.cli import main
    from glip.tools.evaluate import evaluate_detection

    gt = _lvis(json.loads(data.train_json.read_text()))
    ann = tmp_path / "lvis.json"
    ann.write_text(json.dumps(gt))
    metrics = evaluate_detection(
        _MaskOracle(gt, data.image_dir), ann, data.image_dir, task="lvis", iou_types=("bbox", "segm"),
        out_dir=tmp_path / "run", progress=False,
    )  # fmt: skip
    assert metrics["segm_AP"] == pytest.approx(1.0) and metrics["segm_APf"] in (pytest.approx(1.0), -1.0)
    assert "AP" in metrics  # box AP beside it
    results = tmp_path / "run" / "results.json"
    rc = main(["evaluate", "--task", "lvis", "--ann", str(ann), "--results", str(results), "--iou-type", "segm",
               "--out", str(tmp_path / "cli")])  # fmt: skip
    assert rc == 0 and "segm_APr" in capsys.readouterr().out
    scored = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert scored == {k: v for k, v in metrics.items() if k.startswith("segm_")}
