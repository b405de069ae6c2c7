"""``glip vqa`` and ``glip evaluate --task vqa`` on a tiny random model with an answer
head; bad input (empty question, a model without the head, an unreadable image) is one
line on stderr, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glip.cli import main

REPO = Path(__file__).resolve().parents[2]
ANSWERS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "diamond", "0", "1", "2", "yes", "no"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from glip.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("vqa_cli"), num_train=1, num_val=2, image_size=64, seed=1)


@pytest.fixture(scope="module")
def vqa_model(tmp_path_factory) -> Path:
    """A random tiny GLIP with an answer head, saved as `glip train` saves it."""
    import torch

    from glip.config import load_config
    from glip.hub.checkpoint import save_model
    from glip.modeling.build import build_model
    from glip.modeling.language.text_encoder import load_bert_config
    from glip.text import load_tokenizer, resolve_text_encoder

    cfg = load_config(REPO / "configs" / "vqa" / "synthetic.yaml", ["input.min_size_test=64", "input.max_size_test=64"])
    cfg.model.heads.vqa.answers = list(ANSWERS)
    text = resolve_text_encoder(cfg.model.text.encoder)
    torch.manual_seed(0)
    model = build_model(cfg, load_bert_config(text), load_tokenizer(text), pretrained_text=text)
    return save_model(model, tmp_path_factory.mktemp("vqa_model") / "model", include_text_encoder=False)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_vqa_command_answers_and_writes_json(shapes, vqa_model, tmp_path, capsys) -> None:
    image = shapes.image_dir / "val_00000.png"
    rc = main(
        ["vqa", str(image), "-q", "What color is the circle?", "-q", "Is there a red square?", "--weights",
         str(vqa_model), "--device", "cpu", "--out", str(tmp_path), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("What color is the circle? -> ")
    data = json.loads((tmp_path / "answers.json").read_text())
    assert [a["question"] for a in data["answers"]] == ["What color is the circle?", "Is there a red square?"]
    assert all(a["answer"] in ANSWERS and 0 <= a["score"] <= 1 for a in data["answers"])
    assert all(len(a["boxes"]) == len(a["box_scores"]) == len(a["phrases"]) for a in data["answers"])


def test_vqa_command_bad_input_is_one_line(shapes, vqa_model, detector_only, tmp_path, capsys) -> None:
    image = str(shapes.image_dir / "val_00000.png")
    assert main(["vqa", image, "--question", "  ", "--weights", str(vqa_model)]) == 1
    assert "the question is empty" in _error_line(capsys)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main(["vqa", str(bad), "--question", "Is there a circle?", "--weights", str(vqa_model)]) == 1
    assert "cannot read" in _error_line(capsys)
    assert main(["vqa", image, "--question", "Is there a circle?", "--weights", str(detector_only)]) == 1
    line = _error_line(capsys)
    assert "has no VQA head (model.heads.vqa)" in line and "glip-synthetic-tiny" in line
    assert main(["vqa", image, "--question", "Is there a circle?"]) == 1
    assert "name a model with a VQA head" in _error_line(capsys)


def test_evaluate_vqa_writes_accuracy_per_type(shapes, vqa_model, tmp_path, capsys) -> None:
    ann = shapes.root / "vqa_val.json"
    rc = main(
        ["evaluate", "--task", "vqa", "--ann", str(ann), "--images", str(shapes.image_dir), "--weights",
         str(vqa_model), "--device", "cpu", "--out", str(tmp_path), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    data = json.loads(ann.read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num_questions"] == len(data["questions"])
    assert set(metrics["per_question_type"]) == {a["question_type"] for a in data["annotations"]}
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["question_id"] for r in results} == {q["question_id"] for q in data["questions"]}
    # The accuracy is the official one of those answers.
    from glip.evaluation.vqa import vqa_accuracy

    expected = vqa_accuracy({r["question_id"]: r["answer"] for r in results}, data["annotations"])
    assert metrics["accuracy"] == pytest.approx(expected.accuracy)
    assert main(["evaluate", "--task", "vqa", "--ann", str(ann), "--images", str(shapes.image_dir)]) == 1
    assert "name a model with a VQA head" in _error_line(capsys)


def test_evaluate_vqa_scores_a_results_file_under_either_rule(tmp_path, capsys) -> None:
    """The issue's example through the command line: "two" against annotators who disagree
    ("0" x 8, "don't know", "two") scores 0.3 under vqa-api and 0 under evalai."""
    answers = ["0"] * 8 + ["don't know", "two"]
    ann = tmp_path / "vqa.json"
    ann.write_text(json.dumps({
        "questions": [{"question_id": 7, "image_id": 1, "question": "How many cats?"}],
        "annotations": [{"question_id": 7, "image_id": 1, "question_type": "how many", "answer_type": "number",
                         "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]}],
    }))  # fmt: skip
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": 7, "answer": "two"}]))
    base = ["evaluate", "--task", "vqa", "--ann", str(ann), "--results", str(results)]
    assert main([*base, "--vqa-rule", "vqa-api", "--out", str(tmp_path / "api")]) == 0
    out = capsys.readouterr().out
    assert "VQA accuracy 0.3000" in out and "rule vqa-api" in out and "GT-Vision-Lab/VQA" in out
    assert json.loads((tmp_path / "api" / "metrics.json").read_text())["rule"] == "vqa-api"
    assert main([*base, "--out", str(tmp_path / "evalai")]) == 0  # the default rule: evalai
    assert "VQA accuracy 0.0000" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "evalai" / "metrics.json").read_text())
    assert metrics["rule"] == "evalai" and metrics["accuracy"] == 0.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"7": "two"}))
    assert main([*base[:-1], str(bad)]) == 1
    assert "not a VQA results file" in _error_line(capsys)
