"""The ``glip`` command line: argument parsing only; the work lives in the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from glip.tools.common import (
    ArgumentParser,
    add_device_arg,
    add_model_args,
    add_output_arg,
    add_quiet_arg,
    model_arg,
    parse_device,
    run_command,
)

__all__ = ["main"]


def _cmd_convert(args: argparse.Namespace) -> int:
    from glip.hub.checkpoint import save_model
    from glip.hub.loading import load_model

    out_dir = args.out or args.out_dir
    if not out_dir:
        raise ValueError("name the folder to write: glip convert CHECKPOINT OUT_DIR (or --out OUT_DIR)")
    model = load_model(args.checkpoint, args.config, text_encoder=args.text_encoder, trust_pickle=args.trust_pickle)
    out = save_model(model, out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.1f}M parameters): model.safetensors, config.yaml, text_encoder/")
    return 0


def _number(value: float) -> str:
    """``11.6`` under 100, ``930`` above: the digits that mean something."""
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cmd_models(args: argparse.Namespace) -> int:
    from glip.hub.zoo import HF_REPO, cache_dir, list_models

    rows = list_models()
    print(f"{'name':<14} {'params':>7} {'size':>8}  {'cached':<6}  description")
    for r in rows:
        print(
            f"{r['name']:<14} {_number(r['params_m']):>6}M {_number(r['size_mb']):>6} MB  "
            f"{'yes' if r['cached'] else 'no':<6}  "
            f"{r['description']}"
        )
    print(f"\nweights: {HF_REPO} on the Hugging Face hub; converted copies cached in {cache_dir()}")
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from glip.api import Predictor
    from glip.text import parse_prompt
    from glip.tools.detect import detect_files, expand_inputs, format_table

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    overrides = [i for i in args.inputs if "=" in i and not Path(i).exists() and not any(c in i for c in "*?[")]
    if overrides:
        raise ValueError(f"glip detect takes no KEY=VALUE overrides (got {' '.join(overrides)}); see --help")
    prompt = parse_prompt(args.prompt) if args.prompt is not None else None  # fail fast on an empty prompt
    files = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError(f"no image found in {' '.join(args.inputs)}")
    predictor = Predictor(
        model_arg(args), config=args.config, text_encoder=args.text_encoder, device=parse_device(args.device),
        batch_size=args.batch_size, trust_pickle=args.trust_pickle, masks=args.masks,
        weights_dtype=args.weights_dtype, autocast=args.autocast, agnostic_nms=args.agnostic_nms,
        backend=args.backend,
    )  # fmt: skip
    if prompt is None and predictor.model.tuned_prompt is None:
        raise ValueError("--prompt is required (the model records no classes: only fine-tuned models do)")
    entries = detect_files(
        predictor,
        files,
        prompt,
        args.out,
        threshold=args.threshold,
        batch_size=args.batch_size,
        progress=not args.quiet,
        masks=args.masks,
    )
    print(format_table(entries))
    failed = sum("error" in e for e in entries)
    if args.out:
        print(f"wrote {args.out}/detections.json and {len(entries) - failed} annotated images")
    if failed:
        print(f"glip detect: {failed} of {len(entries)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from glip.version import __version__

    parser = ArgumentParser(
        prog="glip", description="GLIP grounded detection: convert checkpoints, detect, train, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"glip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "convert",
        help="convert an official GLIP checkpoint to a glip folder (safetensors + config)",
        description="Convert an official GLIP .pth checkpoint (or a zoo name) into OUT_DIR/model.safetensors + "
        "config.yaml (+ text_encoder/), which glip.load_model(OUT_DIR) and --weights OUT_DIR load without a config.",
        epilog="example: glip convert glip_tiny_model_o365_goldg_cc_sbu.pth glip-t-folder --config glip-t",
    )
    p.add_argument("checkpoint", help="official checkpoint (e.g. glip_tiny_model_o365_goldg_cc_sbu.pth) or zoo name")
    p.add_argument("out_dir", nargs="?", help="folder to write (or --out)")
    add_output_arg(p, help="folder to write")
    add_model_args(p, model=False)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "detect",
        help="detect the phrases of a prompt in images",
        description="Detect the phrases of a prompt in images, folders or globs. Writes one annotated image per "
        "input (in its format) and OUT/detections.json, prints a table. Exit status 1 when any input failed (the others are "
        "still processed).",
        epilog='example: glip detect photo.jpg photos/ "shots/*.png" --prompt "a cat. a dog." --out results',
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR_OR_GLOB")
    p.add_argument(
        "--prompt",
        help='phrases separated by "." ("a cat. a dog."), or a caption whose noun phrases are detected; '
        "optional for a model tuned by `glip finetune` (default: its dataset's classes)",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="keep detections scoring above this (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument(
        "--masks",
        action="store_true",
        help="also segment each detection (models with a mask head): translucent fills in the images, "
        "COCO RLE under 'mask' in detections.json",
    )
    p.add_argument(
        "--agnostic-nms",
        action="store_true",
        help="one label per box: a box found for several phrases keeps only its best-scored one "
        "(class-agnostic NMS at the model's NMS IoU, 0.6)",
    )
    p.add_argument(
        "--backend",
        default="torch",
        help="torch (default), onnxruntime (the exported network on ONNX Runtime, CPU; exported on first use "
        "into the glip cache) or onnxruntime-int8 (dynamically quantised: faster, results move; "
        "see docs/performance.md)",
    )
    add_device_arg(p)
    add_output_arg(p, default="glip_detections")
    add_quiet_arg(p)
    add_model_args(p, weights_dtype=True)
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser(
        "models",
        help="list the model zoo",
        description="List the model-zoo names, sizes and whether each is in the local cache.",
    )
    p.set_defaults(func=_cmd_models)

    from glip.tools.train_cli import add_data_parser, add_train_parser

    add_train_parser(sub)
    add_data_parser(sub)

    from glip.tools.evaluate_cli import add_evaluate_parser

    add_evaluate_parser(sub)

    from glip.tools.finetune_cli import add_finetune_parser

    add_finetune_parser(sub)

    from glip.tools.export_cli import add_export_parser

    add_export_parser(sub)

    from glip.tools.vqa_cli import add_vqa_parser

    add_vqa_parser(sub)
    from glip.tools.caption_cli import add_caption_parser  # captioning (GLIPv2)

    add_caption_parser(sub)
    from glip.tools.demo_cli import add_demo_parser  # the web page (glip[demo])

    add_demo_parser(sub)
    from glip.tools.pseudo_label_cli import add_pseudo_label_parser  # caption self-training data

    add_pseudo_label_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args.func, args, args.command)


if __name__ == "__main__":
    sys.exit(main())
