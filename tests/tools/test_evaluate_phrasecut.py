"""`glip evaluate --task phrasecut`: MDETR's protocol on hand cases (from a results file),
a tiny model with a mask head end to end (runner and CLI), and the user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from glip.cli import main
from glip.data import generate_synthetic
from glip.evaluation.phrasecut import PHRASECUT_BOX_METRICS, PHRASECUT_METRICS
from glip.tools.evaluate_phrasecut import evaluate_phrasecut, score_phrasecut
from tests.golden import case


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_mask(rows: slice, cols: slice, size=(4, 6)) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[rows, cols] = True
    return m


@pytest.fixture
def hand_case(tmp_path):
    """Two tasks on 4x6 images. Task a: ground truth rows 0-1 x cols 0-3 (8 px). Task b:
    ground truth cols 4-5 of every row (8 px)."""
    tasks = [
        {"task_id": "a", "image_id": 1, "phrase": "red thing", "height": 4, "width": 6,
         "Polygons": [[[[0, 0], [3, 0], [3, 1], [0, 1]]]]},
        {"task_id": "b", "image_id": 2, "phrase": "blue thing", "height": 4, "width": 6,
         "Polygons": [[[[4, 0], [5, 0], [5, 3], [4, 3]]]]},
    ]  # fmt: skip
    refer = tmp_path / "refer.json"
    refer.write_text(json.dumps(tasks))
    results = [
        # a: two kept detections whose union is rows 0-1 x cols 0-1 plus row 2 x cols 0-1:
        # intersection 4, union 8 + 2 = 10 -> IoU 0.4; a third one scores under the threshold.
        {"task_id": "a", "image_id": 1, "score": 0.9, "segmentation": _rle(_box_mask(slice(0, 2), slice(0, 2)))},
        {"task_id": "a", "image_id": 1, "score": 0.8, "segmentation": _rle(_box_mask(slice(1, 3), slice(0, 2)))},
        {"task_id": "a", "image_id": 1, "score": 0.6, "segmentation": _rle(_box_mask(slice(0, 4), slice(0, 6)))},
        # b: exactly its ground truth -> IoU 1.
        {"task_id": "b", "image_id": 2, "score": 0.75, "segmentation": _rle(_box_mask(slice(0, 4), slice(4, 6)))},
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return refer, path


def test_hand_cases_from_a_results_file(hand_case) -> None:
    refer, results = hand_case
    m = score_phrasecut(refer, results)  # MDETR's threshold 0.7
    assert m["mIoU"] == pytest.approx((0.4 + 1.0) / 2)
    assert m["cIoU"] == pytest.approx((4 + 8) / (10 + 8))
    assert (m["Pr@0.5"], m["Pr@0.6"], m["Pr@0.7"], m["Pr@0.8"], m["Pr@0.9"]) == (0.5,) * 5
    assert "box_mIoU" not in m  # the refer json has no instance_boxes
    # At 0.5 the 0.6 detection (the whole image) joins task a: IoU 8 / 24.
    assert score_phrasecut(refer, results, score_threshold=0.5)["mIoU"] == pytest.approx((8 / 24 + 1.0) / 2)
    # At 0.8 task b's only detection (0.75) is dropped: an empty prediction, IoU 0.
    assert score_phrasecut(refer, results, score_threshold=0.8)["mIoU"] == pytest.approx((4 / 8 + 0.0) / 2)


def test_cli_scores_a_results_file_and_reports_bad_input(hand_case, tmp_path, capsys) -> None:
    refer, results = hand_case
    rc = main(["evaluate", "--task", "phrasecut", "--ann", str(refer), "--results", str(results),
               "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0 and "Pr@0.7" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["mIoU"] == pytest.approx(0.7)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"task_id": "zzz", "score": 1.0, "segmentation": {}}]))
    rc = main(["evaluate", "--task", "phrasecut", "--ann", str(refer), "--results", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1 and "zzz" in err and len(err.strip().splitlines()) == 1
    rc = main(["evaluate", "--task", "phrasecut", "--results", str(results)])
    assert rc == 1 and "--ann" in capsys.readouterr().err


def test_box_metrics_from_instance_boxes_and_bboxes(hand_case, tmp_path, capsys) -> None:
    """With instance_boxes in the refer json and bbox in the results, the box IoU of the kept
    detections' boxes (iou_boxes on pixels) is reported too, on the command line as well."""
    refer, results = hand_case
    tasks = json.loads(refer.read_text())
    tasks[0]["instance_boxes"] = [[0, 0, 10, 19]]
    tasks[1]["instance_boxes"] = [[4, 0, 2, 4]]
    refer.write_text(json.dumps(tasks))
    entries = json.loads(results.read_text())
    for e, box in zip(entries, ([0, 0, 10, 10], [0, 0, 3, 3], [0, 0, 6, 4], [4, 0, 2, 4])):
        e["bbox"] = box
    results.write_text(json.dumps(entries))
    m = score_phrasecut(refer, results)
    # Task a: kept boxes 0-8 x 0-8 and 0-1 x 0-1 (9 x 9 pixels) against 9 x 18 pixels: 0.5,
    # not above 0.5. Task b: its own box, 1.
    assert m["box_mIoU"] == pytest.approx(0.75) and m["box_Pr@0.5"] == 0.5 and m["box_Pr@0.9"] == 0.5
    rc = main(["evaluate", "--task", "phrasecut", "--ann", str(refer), "--results", str(results),
               "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0 and "box_Pr@0.5" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["box_mIoU"] == pytest.approx(0.75)


class _Oracle:
    """Segments a phrase with the ground truth of the COCO json (one detection per instance),
    or with nothing."""

    def __init__(self, coco: dict, image_dir, empty: bool = False) -> None:
        self.coco, self.empty = coco, empty
        self.by_file = {str(image_dir / img["file_name"]): img for img in coco["images"]}
        self.names = {c["id"]: c["name"] for c in coco["categories"]}

    def iter_predict(self, images, prompt, **kwargs):
        from glip.data.masks import annotation_mask
        from glip.structures import Detections

        assert kwargs["masks"] is True and prompt.phrases == (prompt.caption,)
        for i, path in enumerate(images):
            img = self.by_file[str(path)]
            h, w = img["height"], img["width"]
            anns = [a for a in self.coco["annotations"]
                    if a["image_id"] == img["id"] and self.names[a["category_id"]] == prompt.caption]  # fmt: skip
            anns = [] if self.empty else anns
            masks = torch.from_numpy(np.array([annotation_mask(a, h, w) for a in anns], dtype=bool).reshape(-1, h, w))
            boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)]).reshape(-1, 4)
            ones = torch.ones(len(anns))
            yield i, Detections(boxes.float(), ones, ones.long(), [prompt.caption] * len(anns), (h, w), masks)


def test_ground_truth_as_predictions_is_perfect(tmp_path) -> None:
    ds = generate_synthetic(tmp_path, num_train=1, num_val=4, image_size=(64, 96), seed=5)
    coco = json.loads(ds.val_json.read_text())
    metrics = evaluate_phrasecut(_Oracle(coco, ds.image_dir), ds.phrasecut_json, ds.image_dir, progress=False)
    assert set(metrics) == set(PHRASECUT_METRICS) | set(PHRASECUT_BOX_METRICS)
    assert all(v == 1.0 for v in metrics.values())  # masks and boxes (instance_boxes) both perfect
    nothing = evaluate_phrasecut(_Oracle(coco, ds.image_dir, empty=True), ds.phrasecut_json, ds.image_dir,
                                 progress=False)  # fmt: skip
    assert nothing["mIoU"] == 0.0 and nothing["Pr@0.5"] == 0.0 and nothing["box_mIoU"] == 0.0


@pytest.fixture(scope="module")
def mask_model():
    """The golden tiny GLIP with a mask head (the head at its seeded initialisation)."""
    from transformers import BertConfig

    from glip.config import load_config
    from glip.modeling.build import build_model
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    plain = case.build_tiny_glip()
    overrides = ["model.heads.mask.enabled=true", "name=tiny-mask", "inference.detections_per_img=10"]
    cfg = load_config(case.CONFIG_FILE, overrides)  # few detections keep the pasting cheap
    torch.manual_seed(0)
    model = build_model(cfg, BertConfig(**case._TINY_BERT), load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"]))
    model.load_state_dict(plain.state_dict(), strict=False)
    return plain, model.eval()


def test_tiny_model_end_to_end(mask_model, tmp_path, capsys) -> None:
    from glip.hub.checkpoint import save_model

    plain, model = mask_model
    ds = generate_synthetic(tmp_path / "shapes", num_train=1, num_val=2, image_size=(64, 96), seed=2, max_objects=2)
    save_model(model, tmp_path / "mask_model")
    # --data the synthetic folder: phrasecut_val.json and images/.
    rc = main(["evaluate", "--task", "phrasecut", "--data", str(ds.root), "--weights", str(tmp_path / "mask_model"),
               "--score-threshold", "0.0", "--out", str(tmp_path / "cli"), "--quiet", "--device", "cpu"])  # fmt: skip
    assert rc == 0 and "mIoU" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert set(metrics) == set(PHRASECUT_METRICS) | set(PHRASECUT_BOX_METRICS)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    tasks = json.loads(ds.phrasecut_json.read_text())
    assert results and {r["task_id"] for r in results} <= {t["task_id"] for t in tasks}
    assert all(set(r) == {"task_id", "image_id", "score", "bbox", "segmentation"} for r in results)
    # The written results score to the same numbers without the model.
    assert score_phrasecut(ds.phrasecut_json, tmp_path / "cli" / "results.json", score_threshold=0.0) == metrics
    # A model without a mask head: one line naming it.
    save_model(plain, tmp_path / "plain")
    rc = main(["evaluate", "--task", "phrasecut", "--data", str(ds.root), "--weights", str(tmp_path / "plain"),
               "--quiet", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "mask" in err and len(err.strip().splitlines()) == 1
