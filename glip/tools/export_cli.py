"""``glip export``: argument parsing and the command (the work is in :mod:`glip.export.onnx`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from glip.tools.common import add_model_args

__all__ = ["add_export_parser"]


def _cmd_export(args: argparse.Namespace) -> int:
    from glip.export.onnx import export_onnx
    from glip.hub.loading import load_model

    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'glip[export]'") from None
    if args.prompt is None and not args.prompt_input:
        raise ValueError("give --prompt (fixed in the graph) or --prompt-input (token ids as inputs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(
        args.model, args.config, text_encoder=args.text_encoder, device="cpu", trust_pickle=args.trust_pickle
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
        epilog='example: glip export demo-shapes shapes.onnx --prompt "red circle. blue square." --dynamic',
    )
    p.add_argument("model", help="model-zoo name (see `glip models`) or a checkpoint (folder or official .pth)")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--prompt", help="the prompt fixed in the graph (its text features become constants)")
    p.add_argument("--prompt-input", action="store_true", help="token ids and mask are graph inputs instead")
    p.add_argument("--dynamic", action="store_true", help="any image height and width (default: fixed --size)")
    p.add_argument(
        "--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"), help="traced size (default 800 1216)"
    )
    add_model_args(p, model=False)
    p.set_defaults(func=_cmd_export)
