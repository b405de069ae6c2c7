"""``glip finetune --task vqa|caption`` (glip.tools.finetune_tasks): a tiny run of each from
the bundled demo detector on the synthetic layout, tested with the task's metric at the
end; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

from glip.cli import main
from tests.engine.conftest import IMAGE_SIZE

SMALL = [
    f"input.min_size_train=[{IMAGE_SIZE}]",
    f"input.max_size_train={IMAGE_SIZE}",
    f"input.min_size_test={IMAGE_SIZE}",
    f"input.max_size_test={IMAGE_SIZE}",
    "solver.max_iter=2",
    "solver.ims_per_batch=2",
    "solver.warmup_iters=1",
    "solver.checkpoint_period=0",
    "solver.model_ema=0.0",
]


def test_finetune_vqa_from_the_demo_detector(shapes, tmp_path, capsys) -> None:
    out = tmp_path / "vqa"
    code = main(["finetune", "--task", "vqa", "--data", str(shapes.root), "--model", "demo-shapes", "--out", str(out),
                 "--device", "cpu", "--quiet", *SMALL, "model.heads.vqa.min_answer_count=3"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["task"] == "vqa" and summary["metric"] == "accuracy" and summary["steps"] == 2
    assert 0.0 <= summary["score"] <= 1.0 and summary["score"] == summary["accuracy"]
    assert summary["num_questions"] == len(json.loads((shapes.root / "vqa_val.json").read_text())["questions"])
    assert (out / "eval" / "results.json").is_file() and not (out / "checkpoints").exists()
    assert f"accuracy {summary['score']:.4f}" in capsys.readouterr().out

    import glip

    model = glip.load_model(out / "model", device="cpu")
    assert "vqa" in model.heads and model.config.data.format == "vqa" and model.config.data.flip_prob == 0.0


def test_finetune_caption_head_alone(shapes, tmp_path, monkeypatch) -> None:
    import glip
    from glip.evaluation import captioning

    monkeypatch.setattr(captioning, "java_available", lambda: False)  # METEOR's JVM is slow to start
    out = tmp_path / "caption"
    code = main(["finetune", "--task", "caption", "--data", str(shapes.root), "--model", "demo-shapes",
                 "--mode", "head", "--out", str(out), "--device", "cpu", "--quiet", *SMALL,
                 "model.heads.caption.max_length=4"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metric"] == "CIDEr" and summary["mode"] == "head" and summary["score"] == summary["CIDEr"] >= 0
    assert summary["num_images"] == len(json.loads((shapes.root / "captions_val.json").read_text())["images"])
    tuned, base = glip.load_model(out / "model", device="cpu"), glip.load_model("demo-shapes", device="cpu")
    assert tuned.config.train.tuning == "caption"
    before, after = base.state_dict(), tuned.state_dict()
    # The head trained; the detector it was added to did not move.
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith(("heads.grounding.", "backbone.")))
    assert any(k.startswith("heads.caption.") for k in after)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "/nonexistent/shapes"], "dataset folder not found: /nonexistent/shapes"),
        (["--data", "{root}", "--shots", "5"], "--task vqa takes neither --shots nor --test-json"),
        (["--data", "{root}", "--mode", "linear"], "--mode for --task vqa must be full or head"),
        (["--train-json", "{root}/vqa_train.json"], "give --data DIR, or --train-json, --val-json and --images"),
        (["--data", "{root}", "model.heads.vqa.nonsense=1"], "nonsense"),
    ],
)
def test_bad_task_input_is_one_line(shapes, tmp_path, capsys, extra, message) -> None:
    argv = ["finetune", "--task", "vqa", "--model", "demo-shapes", "--out", str(tmp_path), "--device", "cpu"]
    code = main(argv + [a.replace("{root}", str(shapes.root)) for a in extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
