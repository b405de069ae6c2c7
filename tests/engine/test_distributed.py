"""Whole runs in subprocesses: two processes equal one, an interrupted and resumed run
equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glip.config import save_config
from tests.engine.conftest import REPO, tiny_config


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "glip.train", "--config", str(config), "--output-dir", str(out), "--cpu",
            "--no-progress", *extra]  # fmt: skip


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    last = (out / "checkpoints" / "last").read_text().strip()
    return torch.load(out / "checkpoints" / last / "state.pt", weights_only=True)


def _assert_states_close(a: dict, b: dict, atol: float) -> None:
    assert a["progress"] == b["progress"]
    for part in ("model", "ema"):
        worst = max((a[part][k].float() - b[part][k].float()).abs().max().item() for k in a[part])
        assert worst <= atol, f"{part}: largest difference {worst}"


@pytest.fixture(scope="module")
def run_config(shapes, text_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    save_config(tiny_config(shapes, text_dir), path)
    return path


@pytest.fixture(scope="module")
def reference_run(run_config, tmp_path_factory):
    """One process, 6 steps of 4 images, uninterrupted."""
    out = tmp_path_factory.mktemp("ref")
    subprocess.run(_train_cmd(run_config, out), check=True, env=_env(), capture_output=True, timeout=300)
    return out


@pytest.mark.slow  # a 2-process torchrun beside the reference run: ~45 CPU-s (README: pytest -m slow)
def test_two_processes_equal_one(run_config, reference_run, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "glip.train", *_train_cmd(run_config, out)[3:]]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, ddp = _final_state(reference_run), _final_state(out)
    # Same global batch (2 x 2 images vs 4): gradients differ only by summation order.
    _assert_states_close(ref, ddp, atol=2e-5)
    ref_log = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    ddp_log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ref_log if "loss" in r] == [r["step"] for r in ddp_log if "loss" in r]
    for r, d in zip(ref_log, ddp_log):
        if "loss" in r:
            assert abs(r["loss"] - d["loss"]) < 1e-4 * max(1.0, abs(r["loss"]))


@pytest.mark.slow  # two more training subprocesses: ~30 CPU-s (README: pytest -m slow)
def test_sigterm_then_resume_equals_uninterrupted(run_config, reference_run, tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_cmd(run_config, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and any(json.loads(x).get("step", 0) >= 2 for x in metrics.read_text().splitlines()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-3000:]
    stopped = _final_state(out)["progress"]["step"]
    assert 2 <= stopped < 6
    subprocess.run(_train_cmd(run_config, out, "--resume"), check=True, env=_env(), capture_output=True, timeout=300)
    final = _final_state(out)
    assert final["progress"]["step"] == 6
    _assert_states_close(_final_state(reference_run), final, atol=1e-6)


@pytest.mark.slow  # the reference run plus two more training runs: ~40 s on 2 cores (pytest -m slow)
def test_max_steps_then_resume_is_exact(run_config, reference_run, tmp_path):
    out = tmp_path / "partial"
    subprocess.run(_train_cmd(run_config, out, "--max-steps", "3"), check=True, env=_env(), capture_output=True,
                   timeout=300)  # fmt: skip
    assert _final_state(out)["progress"]["step"] == 3
    subprocess.run(_train_cmd(run_config, out, "--resume"), check=True, env=_env(), capture_output=True, timeout=300)
    ref, final = _final_state(reference_run), _final_state(out)
    assert final["progress"] == ref["progress"]
    for part in ("model", "ema", "optimizer"):
        if part == "optimizer":
            continue
        for k, v in ref[part].items():
            assert torch.equal(v, final[part][k]), f"{part}.{k} differs"
