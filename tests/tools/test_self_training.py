"""scripts/self_training.py end to end at toy size: a fresh synthetic set, the demo teacher's
pseudo-labels, a student trained on them alone for two steps, both evaluated."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import single_torch_thread

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "self_training.py"


def _script():
    spec = importlib.util.spec_from_file_location("self_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    yield from single_torch_thread()


def test_self_training_pipeline_at_toy_size(tmp_path, capsys):
    script = _script()
    size = ["input.min_size_train=[96]", "input.max_size_train=96", "input.min_size_test=96",
            "input.max_size_test=96"]  # fmt: skip
    args = script.parse_args([
        "--work", str(tmp_path), "--num-train", "4", "--num-val", "2", "--image-size", "96", "96",
        "--max-objects", "2", "--steps", "2", "--batch", "2", "--threshold", "0.1", "--quiet", *size,
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
    assert cfg["data"]["train_json"] == str(tmp_path / "pseudo.json") and cfg["data"]["format"] == "mdetr"
    assert json.loads((tmp_path / "report.json").read_text())["teacher"] == report["teacher"]
