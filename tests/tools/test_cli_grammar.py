"""One grammar for every command, and no traceback for a user error in any of them:
each command with a missing file, a bad model name and a bad override exits non-zero
with one `error:` line on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from glip.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "configs" / "synthetic" / "tiny.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from glip.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("ds"), num_train=2, num_val=1, image_size=64, seed=1,
                              colors=("red",), shapes=("circle",), max_objects=1)  # fmt: skip


def _cases(ds, tmp: Path) -> dict[str, list[list[str]]]:
    """Per command: [missing file, bad model name, bad override]."""
    image = str(ds.image_dir / "train_00000.png")
    data, out = str(ds.root), str(tmp / "out")
    (tmp / "a_file").write_text("x")
    return {
        "detect": [
            ["detect", image, "--weights", str(tmp / "missing.pth"), "--prompt", "a circle."],
            ["detect", image, "--model", "no-such-model", "--prompt", "a circle."],
            ["detect", image, "solver.base_lr=1", "--model", "demo-shapes", "--prompt", "a circle."],
        ],
        "evaluate": [
            ["evaluate", "--task", "coco", "--data", str(tmp / "missing"), "--model", "demo-shapes"],
            ["evaluate", "--task", "coco", "--data", data, "--model", "no-such-model", "--out", out],
            ["evaluate", "--task", "coco", "--data", data, "--model", "demo-shapes", "solver.base_lr=1"],
        ],
        "finetune": [
            ["finetune", "--data", str(tmp / "missing"), "--model", "demo-shapes", "--out", out],
            ["finetune", "--data", data, "--model", "no-such-model", "--out", out],
            ["finetune", "--data", data, "--model", "demo-shapes", "--out", out, "solver.no_such_key=1"],
        ],
        "train": [
            ["train", "--config", str(tmp / "missing.yaml"), "--out", out],
            ["train", "--model", "no-such-model", "--data", data, "--out", out],
            ["train", "--config", str(TINY_YAML), "--data", data, "--out", out, "solver.max_iter=lots"],
        ],
        "convert": [
            ["convert", str(tmp / "missing.pth"), out],
            ["convert", "no-such-model", out],
            ["convert", "demo-shapes", out, "--config", "no-such-config"],
        ],
        "export": [
            ["export", str(tmp / "missing.pth"), str(tmp / "m.onnx"), "--prompt", "a cat."],
            ["export", "no-such-model", str(tmp / "m.onnx"), "--prompt", "a cat."],
            ["export", "demo-shapes", str(tmp / "m.onnx"), "--config", "no-such-config", "--prompt", "a cat."],
        ],
        "models": [
            ["models", str(tmp / "missing.txt")],
            ["models", "--model", "no-such-model"],
            ["models", "solver.base_lr=1"],
        ],
        "data synthetic": [
            ["data", "synthetic", "--out", str(tmp / "a_file" / "sub")],
            ["data", "no-such-dataset", "--out", out],
            ["data", "synthetic", "--out", out, "solver.base_lr=1"],
        ],
    }


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["detect", "evaluate", "finetune", "train", "convert", "export", "models", "data synthetic"]
)
def test_user_errors_are_one_line(command, dataset, tmp_path, capsys):
    for argv in _cases(dataset, tmp_path)[command]:
        rc, err = _run(argv, capsys)  # an exception escaping main() fails the test: it would be a traceback
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]
        assert rc not in (0, None), (argv, err)
        assert "Traceback" not in err, (argv, err)
        assert len(errors) == 1 and errors[0].startswith("glip"), (argv, err)
        assert not any(line.startswith("usage:") for line in lines), (argv, err)


def test_no_device_and_bad_resume_values_are_errors(dataset, tmp_path, capsys):
    image = str(dataset.image_dir / "train_00000.png")
    rc, err = _run(["detect", image, "--model", "demo-shapes", "--prompt", "a.", "--device", "tpu9"], capsys)
    assert rc == 1 and "--device" in err
    rc, err = _run(["train", "--config", str(TINY_YAML), "--data", str(dataset.root), "--out", str(tmp_path / "o"),
                    "--resume-from", str(tmp_path)], capsys)  # fmt: skip
    assert rc == 1 and "not a training checkpoint" in err


def test_every_command_speaks_the_same_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    model_options = {"--model", "--weights", "--config", "--text-encoder", "--trust-pickle"}
    expected = {
        "detect": {"--out", "--output-dir", "--device", "--quiet", "--no-progress"} | model_options,
        "evaluate": {"--out", "--output-dir", "--device", "--quiet", "--no-progress"} | model_options,
        "finetune": {"--out", "--output-dir", "--device", "--quiet", "--no-progress", "--resume"} | model_options,
        "pseudo-label": {"--out", "--output-dir", "--device", "--quiet", "--no-progress"} | model_options,
        "train": {
            "--out",
            "--output-dir",
            "--device",
            "--quiet",
            "--no-progress",
            "--data",
            "--resume",
            "--resume-from",
        }
        | model_options,  # fmt: skip
        "convert": {"--out", "--config", "--text-encoder", "--trust-pickle"},
        "export": {"--config", "--text-encoder", "--trust-pickle"},
    }
    for name, options in expected.items():
        have = {s for a in sub[name]._actions for s in a.option_strings}
        assert options <= have, (name, options - have)
    for name in ("finetune", "train"):  # overrides everywhere training happens
        assert any(a.dest == "overrides" for a in sub[name]._actions)
    # Aliases land on the same destination.
    a = sub["train"].parse_args(["--config", "x", "--output-dir", "o", "--no-progress", "--cpu", "--resume", "k=v"])
    assert (a.out, a.quiet, a.device, a.resume, a.overrides) == ("o", True, "cpu", True, ["k=v"])


def test_python_m_glip_train_uses_the_cli_error_handling(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "glip.train", "--config", str(TINY_YAML), "--out", str(tmp_path), "solver.nope=1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("glip train: error:") and "solver.nope" in proc.stderr


def test_python_m_glip_is_the_glip_command():
    from glip.version import __version__

    proc = subprocess.run(
        [sys.executable, "-m", "glip", "--version"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"glip {__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "glip", "detect"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 2 and proc.stderr.startswith("glip detect: error:") and "Traceback" not in proc.stderr
