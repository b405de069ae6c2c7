"""Fine-tuning on a real Roboflow export's layout works the first time: the dataset-name
category (id 0) is in no prompt, every fine-tuned model records its classes and detects
them by default, a prompt-tuned one applies its offset to the README's prompt spelling and
in evaluation, and --no-official-schedule changes the solver only."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import glip
from glip.api import Predictor
from glip.cli import main
from glip.data import generate_synthetic
from glip.hub.checkpoint import load_model
from glip.text import tokenize_prompt
from glip.tools.evaluate import category_prompt
from glip.tools.finetune import transfer_overrides
from tests.conftest import write_roboflow_export

NAMES = {"red circle": "tomato", "red square": "sky", "red triangle": "lemon"}
CLASSES = ["tomato", "sky", "lemon"]
SHORT = ["--quiet", "--device", "cpu", "solver.max_epoch=0", "solver.max_iter=3", "solver.ims_per_batch=2",
         "solver.warmup_iters=1", "train.log_period=1", "data.general_copy=1", "train.eval_period=1000"]  # fmt: skip


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("rf")
    ds = generate_synthetic(root / "shapes", num_train=4, num_val=2, image_size=96, seed=2, colors=("red",),
                            shapes=("circle", "square", "triangle"), max_objects=2)  # fmt: skip
    return write_roboflow_export(ds, root / "fruit-sky", NAMES)


def _finetune(export, out, *extra) -> None:
    assert main(["finetune", "--data", str(export), "--model", "demo-shapes", "--out", str(out), *extra]) == 0


def _detect(export, weights, out, *extra) -> list[dict]:
    args = ["detect", str(export / "test"), "--weights", str(weights), "--out", str(out), "--quiet"]
    assert main([*args, "--device", "cpu", "--threshold", "0.05", *extra]) == 0
    return json.loads((out / "detections.json").read_text())


def test_roboflow_export_prompt_tuned_end_to_end(export, tmp_path, caplog):
    """Tuned a few steps, reloaded, evaluated with its training prompt, detects its own
    classes by default and with the README's spelling, both with the tuned offset."""
    _finetune(export, tmp_path / "pt", "--mode", "prompt", *SHORT)
    folder = tmp_path / "pt" / "model"
    meta = json.loads((folder / "tuned.json").read_text())
    assert meta["prompt"]["caption"] == "tomato. sky. lemon" and meta["token_ids"]
    model = load_model(folder)
    test = json.loads((export / "test" / "_annotations.coco.json").read_text())
    prompt, _ = category_prompt(test["categories"], annotations=test["annotations"])
    assert prompt == model.tuned_prompt  # evaluation prompt = training prompt
    tokens = tokenize_prompt(model.tokenizer, prompt, model.max_query_len)
    assert model.prompt_offset.matches(tokens.input_ids, tokens.attention_mask)
    with caplog.at_level(logging.WARNING, logger="glip.api"):
        args = ["evaluate", "--task", "coco", "--data", str(export), "--split", "test", "--weights", str(folder),
                "--out", str(tmp_path / "eval"), "--quiet", "--device", "cpu"]  # fmt: skip
        assert main(args) == 0
        default = _detect(export, folder, tmp_path / "default")
        readme = _detect(export, folder, tmp_path / "readme", "--prompt", "tomato. sky. lemon.")
    assert not caplog.records  # the offset applied everywhere: no "runs without it" warning
    assert "AP" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert default == readme and any(e["detections"] for e in default)
    assert {d["phrase"] for e in default for d in e["detections"]} <= set(CLASSES)
    image = default[0]["file"]
    tuned = Predictor(model, device="cpu").predict(image, "tomato. sky. lemon.", threshold=0.0)
    zero_shot = Predictor("demo-shapes", device="cpu").predict(image, "tomato. sky. lemon.", threshold=0.0)
    assert not torch.equal(tuned.scores, zero_shot.scores)  # the tuned offset is what ran


def test_no_official_schedule_keeps_the_data_recipe(export, tmp_path):
    _finetune(export, tmp_path / "pt", "--mode", "prompt", "--no-official-schedule", *SHORT)
    meta = json.loads((tmp_path / "pt" / "model" / "tuned.json").read_text())
    assert meta["prompt"]["phrases"] == CLASSES and meta["token_ids"]
    assert _detect(export, tmp_path / "pt" / "model", tmp_path / "det")
    preset = transfer_overrides("prompt", 0, solver=False)
    assert {"data.shuffle_categories=False", "data.sample_negatives=False"} <= set(preset)
    assert not any(p.startswith("solver.") for p in preset)


def test_a_full_finetune_records_its_classes(export, tmp_path):
    _finetune(export, tmp_path / "full", "--mode", "full", *SHORT)
    folder = tmp_path / "full" / "model"
    assert list(load_model(folder).tuned_prompt.phrases) == CLASSES
    entries = _detect(export, folder, tmp_path / "det")  # no --prompt: its classes
    assert {d["phrase"] for e in entries for d in e["detections"]} <= set(CLASSES)
    assert set(glip.predict(entries[0]["file"], model=folder, threshold=0.0, device="cpu").phrases) <= set(CLASSES)
