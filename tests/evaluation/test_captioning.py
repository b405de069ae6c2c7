"""Caption metrics equal pycocoevalcap's COCOEvalCap on the same files (SPICE left out: it
downloads models), and the no-Java path skips METEOR with a note."""

from __future__ import annotations

import json

import pytest

from glip.evaluation import captioning
from glip.evaluation.captioning import evaluate_caption_files, evaluate_captions, simple_ptb_tokenize

REFERENCES = {
    1: ["A red circle to the left of a blue square.", "a red disc left of a blue box", "Red circle, blue square!"],
    2: ["a green triangle above a yellow diamond", "A green triangle over a yellow diamond."],
    3: ["a blue square", "one blue square on grey noise"],
    4: ["a yellow star below a red circle and a blue square", "A star (yellow) under a red circle."],
}
PREDICTIONS = {
    1: "a red circle to the left of a blue square",
    2: "a green triangle below a yellow diamond",
    3: "a blue square.",
    4: "a yellow star below a red circle",
}


@pytest.fixture()
def files(tmp_path):
    gt = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in REFERENCES],
        "annotations": [
            {"id": 10 * i + k, "image_id": i, "caption": c}
            for i, refs in REFERENCES.items()
            for k, c in enumerate(refs)
        ],
    }
    ann, res = tmp_path / "captions.json", tmp_path / "results.json"
    ann.write_text(json.dumps(gt))
    res.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDICTIONS.items()]))
    return ann, res


class _Skipped:
    """Stands in for a pycocoevalcap scorer left out of a comparison."""

    def __init__(self, name: str) -> None:
        self.name = name

    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(gts)

    def method(self):
        return self.name


def _official(ann, res, monkeypatch, meteor: bool) -> dict[str, float]:
    from pycocoevalcap import eval as cap_eval
    from pycocotools.coco import COCO

    # SPICE downloads Stanford models on first use: always left out.
    monkeypatch.setattr(cap_eval, "Spice", lambda: _Skipped("SPICE"))
    if not meteor:
        monkeypatch.setattr(cap_eval, "Meteor", lambda: _Skipped("METEOR"))
    coco = COCO(str(ann))
    coco_res = coco.loadRes(str(res))
    evaluator = cap_eval.COCOEvalCap(coco, coco_res)
    evaluator.params["image_id"] = coco_res.getImgIds()
    evaluator.evaluate()
    return evaluator.eval


_NAMES = {"BLEU-1": "Bleu_1", "BLEU-2": "Bleu_2", "BLEU-3": "Bleu_3", "BLEU-4": "Bleu_4", "METEOR": "METEOR",
          "ROUGE-L": "ROUGE_L", "CIDEr": "CIDEr"}  # fmt: skip


def _compare(files, monkeypatch, meteor: bool) -> None:
    ann, res = files
    ours = evaluate_caption_files(ann, res, meteor=meteor)
    official = _official(ann, res, monkeypatch, meteor)
    names = {k: v for k, v in _NAMES.items() if meteor or k != "METEOR"}
    assert set(ours.metrics) == set(names)
    for ours_name, name in names.items():
        assert ours.metrics[ours_name] == pytest.approx(official[name], abs=1e-12), ours_name
    assert ours.num_images == 4
    assert 0 < ours.metrics["CIDEr"] and ours.per_image[1]["BLEU-4"] > ours.per_image[2]["BLEU-4"]


@pytest.mark.skipif(not captioning.java_available(), reason="the reference run needs Java (PTB tokenizer)")
def test_metrics_equal_pycocoevalcap(files, monkeypatch) -> None:
    """BLEU-1..4, ROUGE-L and CIDEr (METEOR's JVM takes 10-40 s to start: the slow test below)."""
    _compare(files, monkeypatch, meteor=False)


@pytest.mark.slow
@pytest.mark.skipif(not captioning.java_available(), reason="METEOR needs Java")
def test_metrics_with_meteor_equal_pycocoevalcap(files, monkeypatch) -> None:
    _compare(files, monkeypatch, meteor=True)


def test_without_java_meteor_is_skipped_with_a_note(monkeypatch) -> None:
    monkeypatch.setattr(captioning, "java_available", lambda: False)
    out = evaluate_captions(REFERENCES, PREDICTIONS)
    assert "METEOR" not in out.metrics and {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(out.metrics)
    assert len(out.notes) == 1 and "METEOR skipped" in out.notes[0]
    with pytest.raises(ValueError, match="METEOR needs Java"):
        evaluate_captions(REFERENCES, PREDICTIONS, meteor=True)


def test_simple_tokenizer_matches_ptb_on_plain_text() -> None:
    assert simple_ptb_tokenize("A Red circle, left of a blue square!") == "a red circle left of a blue square"
    assert simple_ptb_tokenize("a star (yellow)... under it.") == "a star yellow under it"


def test_bad_inputs_are_one_line_errors(files) -> None:
    with pytest.raises(ValueError, match="no predicted caption"):
        evaluate_captions(REFERENCES, {1: "a"})
    ann, res = files
    res.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="not a caption results file"):
        evaluate_caption_files(ann, res)


@pytest.mark.slow  # four Java tokenizer runs: ~6 s (pytest -m slow)
@pytest.mark.skipif(not captioning.java_available(), reason="the PTB tokenizer runs on Java")
def test_quiet_silences_the_java_tokenizer(files, tmp_path, capfd) -> None:
    from glip.cli import main

    ann, res = files
    evaluate_caption_files(ann, res, meteor=False)
    assert "PTBTokenizer tokenized" in capfd.readouterr().err  # what --quiet must hide
    args = ["evaluate", "--task", "caption", "--ann", str(ann), "--results", str(res), "--out", str(tmp_path / "o")]
    assert main([*args, "--quiet"]) == 0
    printed = capfd.readouterr()
    assert "CIDEr" in printed.out and printed.err == ""
