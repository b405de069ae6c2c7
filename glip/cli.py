"""The ``glip`` command line: argument parsing only; the work lives in the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="official GLIP yaml or a glip config (not needed for converted folders)")
    p.add_argument(
        "--text-encoder",
        help="Hugging Face name or local folder with the BERT config.json and tokenizer files "
        "(default: the converted folder's copy, else bert-base-uncased)",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow checkpoints that need unsafe unpickling (only for files you trust)",
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from glip.hub.checkpoint import load_model, save_model

    model = load_model(
        args.checkpoint, args.config, text_encoder=args.text_encoder, trust_pickle=args.trust_pickle
    )
    out = save_model(model, args.out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.1f}M parameters): model.safetensors, config.yaml, text_encoder/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from glip.version import __version__

    parser = argparse.ArgumentParser(
        prog="glip", description="GLIP grounded detection: convert checkpoints, detect, train, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"glip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "convert",
        help="convert an official GLIP checkpoint to a glip folder (safetensors + config)",
        description="Convert an official GLIP .pth checkpoint into OUT_DIR/model.safetensors + config.yaml "
        "(+ text_encoder/), which glip.load_model(OUT_DIR) and --weights OUT_DIR load without a config.",
    )
    p.add_argument("checkpoint", help="official checkpoint, e.g. glip_tiny_model_o365_goldg.pth")
    p.add_argument("out_dir", help="folder to write")
    _add_weights_args(p)
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"glip {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
