"""``glip export``: argument parsing and the command (the work is in :mod:`glip.export.onnx`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from glip.tools.common import (
    accept_device_and_quiet,
    add_hidden_positional,
    add_model_args,
    add_output_arg,
    model_arg,
    take_positional,
)

__all__ = ["add_export_parser"]


def _cmd_export(args: argparse.Namespace) -> int:
    from glip.export.onnx import export_onnx
    from glip.hub.loading import load_model

    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'glip[export]'") from None
    take_positional(args, "old_model", "--model", "--weights")  # glip export MODEL OUT: deprecated, see docs/cli.md
    take_positional(args, "old_out", "--out")
    if model_arg(args) is None:
        raise ValueError("name the model to export: --model NAME or --weights FILE")
    if args.out is None:
        raise ValueError("name the file to write: --out FILE.onnx")
    if args.prompt is None and not args.prompt_input:
        raise ValueError("give --prompt (fixed in the graph) or --prompt-input (token ids as inputs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(
        model_arg(args), args.config, text_encoder=args.text_encoder, device="cpu", trust_pickle=args.trust_pickle
    )
    tokens = export_onnx(
        model, out, args.prompt, prompt_input=args.prompt_input, dynamic=args.dynamic, image_size=tuple(args.size)
    )
    meta = {
        "inputs": ["image"] + (["input_ids", "attention_mask"] if args.prompt_input else []),
        "outputs": ["box_regression", "centerness", "dot_product_logits"],
        "dynamic_image_size": args.dynamic,
        "traced_image_size": list(args.size),
        "preprocessing": asdict(model.preprocessing),
        "phrases": list(tokens.phrases) if tokens is not None and not args.prompt_input else None,
        "label_to_token": tokens.label_to_token if tokens is not None and not args.prompt_input else None,
    }
    side = out.with_suffix(".json")
    side.write_text(json.dumps(meta, indent=2))
    size = "any image size" if args.dynamic else f"{args.size[0]}x{args.size[1]} images"
    prompt = "token ids as inputs" if args.prompt_input else f"{len(tokens.phrases)} phrases fixed"
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB; {size}; {prompt}) and {side.name}")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``glip export`` to the ``glip`` command's subparsers."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (image in, head outputs out)",
        description="Export a model to ONNX: a normalised, padded image [1, 3, H, W] (plus input_ids and "
        "attention_mask with --prompt-input) in; box_regression [1, A, 4], centerness [1, A] and "
        "dot_product_logits [1, A, T] over all anchors out. The deformable convolutions run their pure-PyTorch "
        "form, so no custom operator is needed. Writes OUT.json beside it (phrases, token columns, preprocessing).",
        epilog='example: glip export --model demo-shapes --out shapes.onnx --prompt "red circle. blue square." '
        "--dynamic",
    )
    add_hidden_positional(p, "old_model")  # the positional MODEL OUT of earlier releases
    add_hidden_positional(p, "old_out")
    p.add_argument("--prompt", help="the prompt fixed in the graph (its text features become constants)")
    p.add_argument("--prompt-input", action="store_true", help="token ids and mask are graph inputs instead")
    p.add_argument("--dynamic", action="store_true", help="any image height and width (default: fixed --size)")
    p.add_argument(
        "--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"), help="traced size (default 800 1216)"
    )
    add_output_arg(p, help="the .onnx file to write")
    accept_device_and_quiet(p)  # the graph is traced on the CPU; no progress bar
    add_model_args(p, default_model=None, model_help="a model-zoo name (see `glip models`)")
    p.set_defaults(func=_cmd_export)
