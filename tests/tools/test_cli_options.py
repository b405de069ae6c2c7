"""The common options of every `glip` command (docs/cli.md): each command's help shows the ones
that mean something to it, every command shows and accepts --device and --quiet, the older spellings
still parse to the same values, and `glip evaluate` dispatches through its task table."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from glip.cli import build_parser, main
from glip.tools.evaluate_cli import EVAL_TASKS

MODEL = ("--model", "--weights", "--config", "--text-encoder", "--trust-pickle")
ALL = {"model", "out", "device", "quiet", "threshold"}
# docs/cli.md's table: the common options each command shows in its help.
GRAMMAR: dict[str, set[str]] = {
    "convert": {"model", "out", "device", "quiet"},
    "detect": ALL,
    "models": {"device", "quiet"},
    "train": {"model", "out", "device", "quiet"},
    "data synthetic": {"out", "device", "quiet"},
    "data shards": {"out", "device", "quiet"},
    "data odvg": {"out", "device", "quiet"},
    "evaluate": ALL,
    "finetune": {"model", "out", "device", "quiet"},
    "export": {"model", "out", "device", "quiet"},
    "vqa": ALL,
    "caption": ALL,
    "demo": {"model", "device", "quiet"},
    "pseudo-label": ALL,
}
OPTIONS = {
    "model": MODEL,
    "out": ("--out",),
    "device": ("--device",),
    "quiet": ("--quiet",),
    "threshold": ("--threshold",),
}
# The least each command needs to parse.
MINIMAL: dict[str, list[str]] = {
    "detect": ["a.png"],
    "train": ["--out", "o"],
    "data synthetic": ["--out", "o"],
    "data shards": ["ann.json", "--from", "coco", "--images", "i", "--out", "o"],
    "data odvg": ["shards", "--out", "o"],
    "evaluate": ["--task", "coco"],
    "vqa": ["a.png"],
    "caption": ["a.png"],
    "pseudo-label": ["--out", "o"],
}


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command, sub-commands included (``data synthetic``), with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for name, p in subs[0].choices.items():
        yield from _commands(p, (*path, name))


def _shows(parser: argparse.ArgumentParser, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", parser.format_usage()) is not None


def test_every_command_shows_its_common_options_and_accepts_device_and_quiet():
    commands = dict(_commands(build_parser()))
    assert set(commands) == set(GRAMMAR)  # a new command gets a row here and in docs/cli.md
    for name, parser in commands.items():
        for group in GRAMMAR[name]:
            for option in OPTIONS[group]:
                assert _shows(parser, option), (name, option)
        assert {"device", "quiet"} <= GRAMMAR[name], name  # every command shows them
        for group in ALL - GRAMMAR[name]:  # meaningless here: not offered at all
            assert not any(o in parser._option_string_actions for o in OPTIONS[group]), (name, group)
        args = parser.parse_args([*MINIMAL.get(name, []), "--quiet", "--device", "cpu"])
        assert (args.quiet, args.device) == (True, "cpu"), name
        assert parser.parse_args([*MINIMAL.get(name, []), "--no-progress", "--cpu"]).device == "cpu", name


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.mark.parametrize(
    ("command", "alias", "default"),
    [
        (["vqa", "a.png"], "--box-threshold", 0.3),
        (["caption", "a.png"], "--box-threshold", None),
        (["evaluate", "--task", "phrasecut"], "--score-threshold", 0.7),
        (["detect", "a.png"], None, 0.5),
        (["pseudo-label", "--out", "o"], None, 0.5),
    ],
)
def test_threshold_defaults_and_hidden_aliases(command, alias, default):
    assert _parse(command).threshold == default  # each command's default, as before
    assert _parse([*command, "--threshold", "0.25"]).threshold == 0.25
    if alias is not None:
        assert _parse([*command, alias, "0.25"]).threshold == 0.25
        sub = dict(_commands(build_parser()))[command[0]]
        assert alias not in sub.format_help() and "--threshold" in sub.format_help()


def test_threshold_out_of_range_names_threshold(capsys):
    assert main(["vqa", "a.png", "-q", "What?", "--box-threshold", "2"]) == 1
    assert "--threshold must be in [0, 1], got 2.0" in capsys.readouterr().err


def test_export_and_convert_positionals_are_hidden_aliases(tmp_path, capsys):
    for name in ("export", "convert"):
        usage = dict(_commands(build_parser()))[name].format_help()
        assert "--model" in usage and "--out" in usage and "positional arguments" not in usage
    old = _parse(["export", "demo-shapes", "m.onnx"])
    assert (old.old_model, old.old_out, old.model, old.out) == ("demo-shapes", "m.onnx", None, None)
    missing = str(tmp_path / "missing.pth")
    # Both spellings reach the loader with the same file (its one-line error names it).
    for argv in (
        ["convert", missing, str(tmp_path / "o")],
        ["convert", "--weights", missing, "--out", str(tmp_path / "o")],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "missing.pth" in err, err
    # A model named both ways, or none, is a one-line error.
    assert main(["export", "demo-shapes", "m.onnx", "--model", "glip-t", "--prompt", "a."]) == 1
    assert "give --model or --weights" in capsys.readouterr().err
    assert main(["convert", "--out", str(tmp_path / "o")]) == 1
    assert "name the checkpoint to convert" in capsys.readouterr().err
    assert main(["export", "--model", "demo-shapes", "--prompt", "a."]) == 1
    assert "--out FILE.onnx" in capsys.readouterr().err


def test_data_synthetic_takes_quiet(tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = ["data", "synthetic", "--out", str(out), "--num-train", "1", "--num-val", "1", "--image-size", "32"]
    assert main([*argv, "--quiet", "--device", "cpu"]) == 0
    assert (out / "train.json").is_file() and f"wrote {out}/train.json" in capsys.readouterr().out


def test_evaluate_task_table(capsys):
    parser = dict(_commands(build_parser()))["evaluate"]
    task = next(a for a in parser._actions if a.dest == "task")
    assert tuple(task.choices) == tuple(EVAL_TASKS)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--task", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and all(f"'{t}'" in err for t in EVAL_TASKS), err
    # The checks each task makes before any model or file is read.
    refusals = [
        (["--task", "flickr", "--iou-type", "segm"], "implemented for --task coco and lvis, not flickr"),
        (["--task", "vqa", "--iou-type", "bbox", "segm"], "implemented for --task coco and lvis, not vqa"),
        (["--task", "odinw", "--results", "r.json"], "--results scores detection results: use --task coco or lvis"),
        (["--task", "refcoco", "--results", "r.json"], "--results scores detection results"),
        (["--task", "coco", "--results", "r.json"], "--results needs the ground truth: --ann GT.json"),
        (
            ["--task", "phrasecut", "--iou-type", "segm", "--results", "r.json"],
            "--ann REFER.json",
        ),  # reads no --iou-type
        (["--task", "phrasecut", "--score-threshold", "1.5"], "--threshold must be in [0, 1]"),
        (["--task", "coco", "--data", ".", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--task", "caption"], "--task caption needs --ann"),
    ]
    for argv, message in refusals:
        assert main(["evaluate", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
