"""scripts/self_training.py end to end at toy size: a fresh synthetic set, the demo teacher's
pseudo-labels, a student trained on them alone for two steps, both evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_script, single_torch_thread


def _script():
    return load_script("self_training")


@pytest.fixture(autouse=True)
def one_thread():
    yield from single_torch_thread()


def test_self_training_pipeline_at_toy_size(tmp_path, capsys):
    script = _script()
    size = ["input.min_size_train=[96]", "input.max_size_train=96", "input.min_size_test=96",
            "input.max_size_test=96"]  # fmt: skip
    args = script.parse_args([
        "--work", str(tmp_path), "--num-train", "4", "--num-val", "2", "--image-size", "96", "96",
        "--max-objects", "2", "--steps", "2", "--batch", "2", "--threshold", "0.1", "--conf", "0.1", "--quiet", *size,
    ])  # fmt: skip
    report = script.run(args)
    out = capsys.readouterr().out
    assert report["steps"] == 2 and report["pseudo_boxes"] > 0 and report["pseudo_captions"] >= 2
    for name in ("teacher", "student model", "student model_ema"):
        assert 0.0 <= report[name]["AP"] <= report[name]["AP50"] <= 100.0
    gap = report["gap student model"]
    assert gap["AP"] == report["teacher"]["AP"] - report["student model"]["AP"]
    assert "gap: teacher - student model" in out and "pseudo-labels:" in out
    # The student read the pseudo-labels only (not the synthetic set's boxes).
    cfg = yaml.safe_load((tmp_path / "student" / "config.yaml").read_text())
    assert cfg["data"]["train_json"] == str(tmp_path / "student.json") and cfg["data"]["format"] == "mdetr"
    assert (cfg["data"]["pack_captions"], cfg["data"]["pack_disjoint"]) == (3, True)  # other captions as negatives
    quality = report["pseudo_quality"]
    assert quality["teacher (> 0.1)"]["boxes"] == report["pseudo_boxes"] and "pseudo-label quality" in out
    assert quality["student data (> 0.1)"]["boxes"] == report["student_boxes"] <= report["pseudo_boxes"]
    assert len(json.loads((tmp_path / "student.json").read_text())["annotations"]) == report["student_boxes"]
    assert json.loads((tmp_path / "report.json").read_text())["teacher"] == report["teacher"]


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _pseudo(tmp_path: Path) -> Path:
    """Two captions: the first with two boxes for "a red circle" (one a duplicate) and none
    for "a blue square"; the second with one box per phrase."""
    caption = "a red circle to the left of a blue square"
    box = {"iscrowd": 0, "category_id": 1, "area": 100.0}
    return _write(tmp_path / "pseudo.json", {
        "categories": [{"id": 1, "name": "object"}],
        "images": [{"id": 1, "file_name": "a.png", "caption": caption},
                   {"id": 2, "file_name": "b.png", "caption": caption}],
        "annotations": [
            {**box, "id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9, "phrase": "a red circle",
             "tokens_positive": [[0, 12]]},
            {**box, "id": 2, "image_id": 1, "bbox": [1, 0, 10, 10], "score": 0.5, "phrase": "a red circle",
             "tokens_positive": [[0, 12]]},
            {**box, "id": 3, "image_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8, "phrase": "a red circle",
             "tokens_positive": [[0, 12]]},
            {**box, "id": 4, "image_id": 2, "bbox": [20, 20, 10, 10], "score": 0.4, "phrase": "a blue square",
             "tokens_positive": [[28, 41]]},
        ],
    })  # fmt: skip


def test_refine_keeps_the_best_boxes_per_phrase_and_complete_captions(tmp_path):
    script = _script()
    pseudo, out = _pseudo(tmp_path), tmp_path / "out.json"

    def refine(conf=0.0, nms=-1.0, per_phrase=0, complete=False):
        return script.refine(pseudo, out, conf, nms, per_phrase, complete)

    assert refine() == {"captions": 2, "boxes": 4}
    assert refine(per_phrase=1) == {"captions": 2, "boxes": 3}
    assert 2 not in {a["id"] for a in json.loads(out.read_text())["annotations"]}  # the lower-scored duplicate
    assert refine(nms=0.5) == {"captions": 2, "boxes": 3}  # box 2 overlaps box 1 at IoU 0.82
    assert refine(conf=0.45) == {"captions": 2, "boxes": 3}  # box 4 scores 0.4
    assert refine(conf=0.45, complete=True) == {"captions": 0, "boxes": 0}  # both captions lack a blue square
    assert refine(per_phrase=1, complete=True) == {"captions": 1, "boxes": 2}
    kept = json.loads(out.read_text())
    assert [im["id"] for im in kept["images"]] == [2] and {a["image_id"] for a in kept["annotations"]} == {2}


def test_pseudo_label_quality_against_gold_boxes(tmp_path):
    script = _script()
    gold = _write(tmp_path / "train.json", {
        "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}, {"id": 3, "name": "red square"}],
        "images": [{"id": 7, "file_name": "a.png"}, {"id": 8, "file_name": "b.png"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [20, 20, 10, 10]},
            {"id": 3, "image_id": 8, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 4, "image_id": 8, "category_id": 3, "bbox": [20, 20, 10, 10]},  # a box of the wrong name
            {"id": 5, "image_id": 8, "category_id": 3, "bbox": [40, 40, 5, 5]},  # not named by the caption
        ],
    })  # fmt: skip
    pseudo, high_json = _pseudo(tmp_path), tmp_path / "high.json"
    low = script.pseudo_label_quality(pseudo, gold)
    # Four boxes; right: box 1 and box 3; box 2 duplicates box 1; box 4 names a blue square on a red one.
    assert (low["boxes"], low["captions"], low["duplicates"]) == (4, 2, 1)
    assert low["precision"] == 50.0 and low["recall"] == 40.0 and low["recall_named"] == pytest.approx(200 / 3)
    script.refine(pseudo, high_json, 0.6, -1.0, 0, False)
    high = script.pseudo_label_quality(high_json, gold)
    assert (high["boxes"], high["captions"], high["precision"], high["recall"]) == (2, 2, 100.0, 40.0)


def test_synthetic_set_is_drawn_once_per_settings(tmp_path, monkeypatch):
    import glip.data

    script = _script()
    args = script.parse_args(["--num-train", "2", "--num-val", "1", "--image-size", "32", "32", "--max-objects", "1"])
    first = script.synthetic_set(args, tmp_path)
    monkeypatch.setattr(glip.data, "generate_synthetic", lambda *a, **k: pytest.fail("drawn again"))
    again = script.synthetic_set(args, tmp_path)
    assert again.train_json == first.train_json and again.categories == first.categories
    args.seed = 2  # other settings: drawn anew
    with pytest.raises(pytest.fail.Exception, match="drawn again"):
        script.synthetic_set(args, tmp_path)


def test_self_training_with_the_clip_teacher_and_distillation(tmp_path, capsys):
    """The CLIP teacher names the GLIP teacher's regions; the student trains on them with the
    distillation loss on the teacher's concept scores."""
    pytest.importorskip("open_clip")
    from tests.conftest import save_tiny_open_clip

    (tmp_path / "clip").mkdir()
    clip = save_tiny_open_clip(tmp_path / "clip")
    size = ["input.min_size_train=[96]", "input.max_size_train=96", "input.min_size_test=96",
            "input.max_size_test=96", "model.heads.grounding.distill_weight=1.0", "train.log_period=1"]  # fmt: skip
    args = _script().parse_args([
        "--work", str(tmp_path / "run"), "--num-train", "4", "--num-val", "2", "--image-size", "96", "96",
        "--max-objects", "2", "--steps", "2", "--batch", "2", "--threshold", "0", "--conf", "0", "--quiet",
        "--clip-model", str(clip), "--clip-background", "0", *size,
    ])  # fmt: skip
    report = _script().run(args)
    capsys.readouterr()
    assert report["clip_model"] == str(clip) and report["steps"] == 2
    student = json.loads((tmp_path / "run" / "student.json").read_text())
    assert student["annotations"] and all("concept_scores" in a for a in student["annotations"])
    assert all("concepts" in im for im in student["images"])
    settings = json.loads((tmp_path / "run" / "pseudo.json.shards" / "settings.json").read_text())
    assert settings["teacher"] == "clip" and settings["model"]["clip_model"] == str(clip)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_distill" in m for m in metrics)  # the distillation loss trained
