"""`glip train --resume`: a flag that cannot swallow an override, and a log with each step
once after resuming from a checkpoint older than the last logged step (a kill -9)."""

from __future__ import annotations

import json
import shutil

from glip.cli import main
from glip.engine.checkpoint import checkpoint_dir
from tests.engine.conftest import TINY_YAML, shapes, text_dir, tiny_overrides  # noqa: F401 (fixtures)


def _steps(out, key="loss"):
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_resume_after_a_kill_logs_each_step_once(shapes, text_dir, tmp_path, capsys):  # noqa: F811
    out, copy = tmp_path / "run", tmp_path / "copy"
    overrides = tiny_overrides(shapes, text_dir, **{"solver.max_iter": 6, "solver.checkpoint_period": 2,
                                                    "solver.model_ema": 0.0})  # fmt: skip
    train = ["train", "--config", str(TINY_YAML), "--quiet", "--device", "cpu"]
    assert main([*train, "--out", str(out), "--max-steps", "5", *overrides]) == 0, capsys.readouterr().err
    assert _steps(out) == [1, 2, 3, 4, 5]
    # What a kill -9 right after step 5 leaves: step 5 logged (plus a half-written line),
    # the last checkpoint at step 4.
    (out / "checkpoints" / "last").write_text(checkpoint_dir(out, 4).name + "\n")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    shutil.copytree(out, copy)
    # --resume is a flag: the overrides after it stay overrides.
    assert main([*train, "--out", str(out), "--resume", *overrides]) == 0, capsys.readouterr().err
    assert "step 6" in capsys.readouterr().out
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    # TensorBoard purges the interrupted run's events past the checkpoint too.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    # --resume-from names the checkpoint explicitly (here an older one than checkpoints/last).
    (copy / "checkpoints" / "last").write_text(checkpoint_dir(copy, 5).name + "\n")
    resume_from = ["--resume-from", str(checkpoint_dir(copy, 4))]
    assert main([*train, "--out", str(copy), *resume_from, *overrides]) == 0, capsys.readouterr().err
    assert _steps(copy) == [1, 2, 3, 4, 5, 6]
