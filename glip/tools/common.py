"""What every ``glip`` command shares: one option grammar and one error handler.

Every command spells the same thing the same way: ``--out`` (alias ``--output-dir``),
``--device`` (``--cpu`` is kept as a hidden alias of ``--device cpu``), ``--quiet`` (alias
``--no-progress``), the model options ``--model``, ``--weights``, ``--config``,
``--text-encoder``, ``--trust-pickle`` (:func:`add_model_args`) and ``KEY=VALUE`` config
overrides (:func:`check_overrides`). :func:`run_command` turns a user error into one
``glip COMMAND: error: ...`` line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = [
    "USER_ERRORS",
    "ArgumentParser",
    "add_device_arg",
    "add_model_args",
    "add_output_arg",
    "add_overrides_arg",
    "add_quiet_arg",
    "check_overrides",
    "model_arg",
    "parse_device",
    "run_command",
]

# What a user can cause: missing or unreadable files, bad values, bad names. Anything
# else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``PROG: error: MESSAGE (see PROG --help)``) instead
    of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_args(
    p: argparse.ArgumentParser,
    *,
    default_model: str | None = "glip-t",
    model: bool = True,
    model_help: str | None = None,
    config_help: str | None = None,
    weights_dtype: bool = False,
) -> None:
    """``--model``, ``--weights`` (unless ``model`` is False: a positional names the
    weights), ``--config``, ``--text-encoder``, ``--trust-pickle``; all interpreted by
    :func:`glip.hub.sources.resolve_model_source`. ``weights_dtype``: also ``--weights-dtype``
    (``float32`` or ``bfloat16``/``bf16``, for inference commands; default float32) and
    ``--autocast`` (``no``, ``bf16``, ``fp16``; default no)."""
    g = p.add_argument_group("model")
    if model:
        default = f" (default {default_model})" if default_model else ""
        g.add_argument(
            "--model", default=default_model, help=model_help or f"a model-zoo name (see `glip models`){default}"
        )
        g.add_argument(
            "--weights",
            help="instead of --model: a converted or tuned folder, a .safetensors file or an official .pth "
            "(zoo names work too)",
        )
    g.add_argument(
        "--config",
        help=config_help
        or "a yaml (ours or official) or a zoo config name (glip-t, glip-l...): the architecture of an "
        "official .pth; zoo names and converted folders carry their own",
    )
    g.add_argument(
        "--text-encoder",
        help="Hugging Face name or local folder with the BERT config.json and tokenizer files "
        "(default: the converted folder's copy, else the config's)",
    )
    g.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pth that needs arbitrary code execution to unpickle (only for files you trust)",
    )
    if weights_dtype:
        g.add_argument(
            "--weights-dtype",
            choices=("float32", "bfloat16", "bf16"),
            default="float32",
            help="bfloat16 (bf16) keeps the weights in bfloat16, half their memory, and computes in float32; "
            "results move by the weights' rounding (README, Speed and memory). Default float32",
        )
        g.add_argument(
            "--autocast",
            choices=("no", "bfloat16", "bf16", "float16", "fp16"),
            default="no",
            help="run the network under torch.autocast in this dtype (float32 weights, boxes and scores "
            "decoded in float32): the fast mode on a GPU; its effect on the results is in the README "
            "(Speed and memory). Default no",
        )


def model_arg(args: argparse.Namespace) -> str | None:
    """The model the options name: ``--weights`` when given, else ``--model``."""
    return getattr(args, "weights", None) or getattr(args, "model", None)


def add_output_arg(
    p: argparse.ArgumentParser, *, default: str | None = None, required: bool = False, help: str = "output folder"
) -> None:
    """``--out DIR`` (alias ``--output-dir``)."""
    suffix = f" (default {default})" if default else ""
    p.add_argument("--out", "--output-dir", dest="out", default=default, required=required, help=help + suffix)


def add_device_arg(
    p: argparse.ArgumentParser, help: str = "cpu, cuda, cuda:1... (default: cuda when available)"
) -> None:
    """``--device`` (and the hidden alias ``--cpu`` = ``--device cpu``)."""
    p.add_argument("--device", help=help)
    p.add_argument("--cpu", dest="device", action="store_const", const="cpu", help=argparse.SUPPRESS)


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    """``--quiet`` (alias ``--no-progress``)."""
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")


def add_overrides_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied last, e.g. solver.base_lr=1e-4"
    )


def check_overrides(overrides: Sequence[str], config: Any = None) -> None:
    """Raises ``ValueError`` for an override that is not ``KEY=VALUE``, and (given the
    :class:`GLIPConfig` they apply to) for an unknown key or a value of the wrong type."""
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise ValueError(f"overrides must be KEY=VALUE (e.g. solver.base_lr=1e-4), got {' '.join(bad)}")
    if config is not None and overrides:
        from glip.config.io import config_from_dict, config_to_dict

        config_from_dict(config_to_dict(config), overrides)


def parse_device(device: str | None) -> str | None:
    """Checks ``--device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) against this machine."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:1...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, name: str) -> int:
    """``func(args)``; a user error becomes ``glip NAME: error: MESSAGE`` on stderr and 1."""
    try:
        return int(func(args))
    except USER_ERRORS as e:
        print(f"glip {name}: error: {e}", file=sys.stderr)
        return 1
