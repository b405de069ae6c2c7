"""`glip train --resume`: a flag that cannot swallow an override, and a log with each step
once after resuming from a checkpoint older than the last logged step (a kill -9); the
optimiser settings a checkpoint keeps, a finished run left alone, a corrupt checkpoint;
the planned steps said before training, and ``solver.max_iter`` winning over epochs."""

from __future__ import annotations

import json
import shutil

import pytest

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


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_max_iter_wins_over_the_configs_epochs_and_the_plan_is_logged(shapes, text_dir, tmp_path, capsys, caplog):  # noqa: F811
    # A config whose length is in epochs (2 x 4 steps of the 16 images): solver.max_iter=7 wins.
    config = tmp_path / "epochs.yaml"
    config.write_text(TINY_YAML.read_text().replace("max_epoch: 0", "max_epoch: 2"))
    overrides = tiny_overrides(shapes, text_dir, **{"solver.max_iter": 7, "solver.model_ema": 0.0})
    train = ["train", "--config", str(config), "--quiet", "--device", "cpu", "--out", str(tmp_path / "run")]
    caplog.set_level("INFO")
    assert main([*train, *overrides]) == 0, capsys.readouterr().err
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6, 7]
    log = caplog.text
    assert "plan: 7 steps (solver.max_iter=7; an epoch is 4 steps (16 images, batch 4))" in log
    assert "time estimated after 6 steps" in log
    assert "estimated time left: " in log and "(1 step x " in log  # timed over steps 2-6
    # Both lengths given by the user: the conflict is named, nothing runs.
    assert main([*train, *overrides, "solver.max_epoch=2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "solver.max_iter=7 and solver.max_epoch=2 conflict" in err


@pytest.fixture(scope="module")
def finished_run(shapes, text_dir, tmp_path_factory):  # noqa: F811
    """A 4-step run validated every 2 steps, checkpoints at steps 2 and 4; its options and overrides."""
    out = tmp_path_factory.mktemp("finished") / "run"
    overrides = tiny_overrides(shapes, text_dir, **{
        "solver.max_iter": 4, "solver.checkpoint_period": 2, "solver.model_ema": 0.0, "train.eval_period": 2,
        "data.val_json": shapes.val_json, "data.val_images": shapes.image_dir,
    })  # fmt: skip
    options = ["train", "--config", str(TINY_YAML), "--quiet", "--device", "cpu"]
    assert main([*options, "--out", str(out), *overrides]) == 0
    return out, options, overrides


def test_resume_of_a_finished_run_does_nothing(finished_run, tmp_path, capsys):
    source, options, overrides = finished_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    before = (out / "metrics.jsonl").read_text()
    assert [r["step"] for r in _records(out) if "val/loss" in r] == [2, 4]
    capsys.readouterr()
    assert main([*options, "--out", str(out), "--resume", *overrides]) == 0
    assert capsys.readouterr().out == f"already finished at step 4: nothing to do ({out}/model)\n"
    assert (out / "metrics.jsonl").read_text() == before  # no second validation row


def test_resume_keeps_the_checkpoints_optimiser_settings_and_records_them(finished_run, tmp_path, capsys, caplog):
    source, options, overrides = finished_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    caplog.set_level("INFO")
    resume = ["--out", str(out), "--resume-from", str(checkpoint_dir(out, 2))]
    assert main([*options, *resume, *overrides, "solver.base_lr=0.1", "solver.max_iter=6"]) == 0, (
        capsys.readouterr().err
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "resume" in r.getMessage()]
    assert warnings == [
        "resume: solver.base_lr=0.1 ignored: the checkpoint's optimiser state keeps solver.base_lr=0.001 "
        "(config.yaml records it; a new run can change it)"
    ]
    assert "resume: in effect from the checkpoint on: solver.max_iter 4 -> 6" in caplog.text
    from glip.config import load_config

    saved = load_config(out / "config.yaml").solver
    assert (saved.base_lr, saved.max_iter) == (0.001, 6)  # the truth: 6 steps at the checkpoint's rates
    records = _records(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val/loss" in r] == [2, 4, 6]
    assert max(r["lr_max"] for r in records if "lr_max" in r) < 0.01  # bias groups: 2 x base_lr


def test_a_corrupt_checkpoint_is_a_one_line_error(finished_run, tmp_path, capsys):
    source, options, overrides = finished_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    state = checkpoint_dir(out, 4) / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a copy cut short
    capsys.readouterr()
    assert main([*options, "--out", str(out), "--resume", *overrides]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"glip train: error: {state} is corrupt or not a checkpoint (")
    assert err.endswith(f"; resume from an older one with --resume-from {checkpoint_dir(out, 2)}\n")
