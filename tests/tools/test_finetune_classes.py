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
from glip.hub.loading import load_model
from glip.text import tokenize_prompt
from glip.tools.evaluate import category_prompt
from glip.tools.finetune import transfer_overrides
from tests.conftest import write_roboflow_export

NAMES = {"red circle": "tomato", "red square": "sky", "red triangle": "lemon"}
CLASSES = ["tomato", "sky", "lemon"]
# 12 steps: from the calibrated demo model (its bias0 lowered by 1) three left every token of the
# new class names under the 0.05 candidate cut.
SHORT = ["--quiet", "--device", "cpu", "solver.max_epoch=0", "solver.max_iter=12", "solver.ims_per_batch=2",
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
    """Tuned a few steps, reloaded and tested with its training prompt (inside finetune),
    detects its own classes by default and with the README's spelling, with the offset."""
    with caplog.at_level(logging.WARNING, logger="glip.api"):
        _finetune(export, tmp_path / "pt", "--mode", "prompt", *SHORT)
    assert not caplog.records  # validation and test ran the tuned prompt: no "runs without it"
    assert "AP" in json.loads((tmp_path / "pt" / "metrics.json").read_text())
    folder = tmp_path / "pt" / "model"
    meta = json.loads((folder / "tuned.json").read_text())
    assert meta["prompt"]["caption"] == "tomato. sky. lemon" and meta["token_ids"]
    model = load_model(folder)
    test = json.loads((export / "test" / "_annotations.coco.json").read_text())
    prompt, _ = category_prompt(test["categories"], annotations=test["annotations"])
    assert prompt == model.tuned_prompt  # evaluation prompt = training prompt
    tokens = tokenize_prompt(model.tokenizer, prompt, model.max_query_len)
    assert model.prompt_offset.matches(tokens.input_ids, tokens.attention_mask)
    default = _detect(export, folder, tmp_path / "default")  # no --prompt: its classes
    assert any(e["detections"] for e in default)
    assert {d["phrase"] for e in default for d in e["detections"]} <= set(CLASSES)
    predictor = Predictor(model, device="cpu")
    with caplog.at_level(logging.WARNING, logger="glip.api"):
        readme = predictor.predict([e["file"] for e in default], "tomato. sky. lemon.", threshold=0.05)
    assert not caplog.records
    assert [d.to_list() for d in readme] == [e["detections"] for e in default]
    found = next(e["file"] for e in default if e["detections"])  # an image the tuned model finds something in
    offset, model.prompt_offset = model.prompt_offset, None
    zero_shot = predictor.predict(found, "tomato. sky. lemon.", threshold=0.0)
    model.prompt_offset = offset
    tuned = predictor.predict(found, "tomato. sky. lemon.", threshold=0.0)
    assert not torch.equal(tuned.scores, zero_shot.scores)  # the tuned offset is what ran


def test_no_official_schedule_keeps_the_data_recipe(export, tmp_path):
    _finetune(export, tmp_path / "pt", "--mode", "prompt", "--no-official-schedule", *SHORT, "solver.max_iter=1")
    meta = json.loads((tmp_path / "pt" / "model" / "tuned.json").read_text())
    assert meta["prompt"]["phrases"] == CLASSES and meta["token_ids"]  # what glip detect needs
    preset = transfer_overrides("prompt", 0, solver=False)
    assert {"data.shuffle_categories=False", "data.sample_negatives=False"} <= set(preset)
    assert not any(p.startswith("solver.") for p in preset)


def test_a_full_finetune_records_its_classes(export, tmp_path):
    _finetune(export, tmp_path / "full", "--mode", "full", *SHORT, "solver.max_iter=1")
    folder = tmp_path / "full" / "model"
    entries = _detect(export, folder, tmp_path / "det")  # no --prompt: its classes
    assert {d["phrase"] for e in entries for d in e["detections"]} <= set(CLASSES)
    model = load_model(folder)
    assert list(model.tuned_prompt.phrases) == CLASSES
    assert set(glip.predict(entries[0]["file"], model=model, threshold=0.0).phrases) <= set(CLASSES)
