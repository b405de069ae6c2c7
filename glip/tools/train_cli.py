"""``glip train`` and ``glip data synthetic``: argument parsing and the calls they make."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence

__all__ = ["add_data_parser", "add_train_parser", "build_train_parser", "run_train"]


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a glip yaml (e.g. configs/synthetic/tiny.yaml) or an official one")
    p.add_argument("--output-dir", required=True, help="checkpoints, metrics.jsonl, config.yaml and the final model")
    p.add_argument("--weights", help="initial weights: an official .pth or a glip folder")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from OUTPUT_DIR's last checkpoint (or from the checkpoint folder given)",
    )
    p.add_argument("--max-steps", type=int, help="stop after this many steps (checkpointed); the schedule is unchanged")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. solver.base_lr=1e-4")


def run_train(args: argparse.Namespace) -> int:
    """Runs :func:`glip.engine.train`; exit status 0, or 128 + signal when interrupted
    (the checkpoint is written first)."""
    import logging

    from glip.config import load_config
    from glip.engine import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be KEY=VALUE, got {bad}")
    cfg = load_config(args.config, args.overrides)
    result = train(
        cfg,
        args.output_dir,
        weights=args.weights,
        resume=args.resume,
        max_steps=args.max_steps,
        cpu=True if args.cpu else None,
        progress_bar=not args.no_progress,
    )
    if result.interrupted_by is not None:
        print(f"interrupted by {signal.Signals(result.interrupted_by).name}: checkpoint {result.checkpoint}")
        return 128 + int(result.interrupted_by)
    print(f"step {result.progress.step}: checkpoint {result.checkpoint}")
    return 0


def build_train_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m glip.train`` (same arguments as ``glip train``)."""
    p = argparse.ArgumentParser(
        prog="glip.train",
        description="Train GLIP. Launch with `accelerate launch -m glip.train ...` or `torchrun -m glip.train ...` "
        "for several processes or machines.",
    )
    _train_arguments(p)
    return p


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune GLIP on COCO-format data",
        description="Train GLIP on a COCO json + image folder (see data.* in the config). One process here; for "
        "several GPUs or machines use `accelerate launch -m glip.train` with the same arguments. Writes "
        "OUTPUT_DIR/config.yaml, metrics.jsonl, tensorboard/, checkpoints/ and, at the end, model/ (+ model_ema/).",
        epilog="example: glip train --config configs/synthetic/tiny.yaml --output-dir runs/tiny "
        "data.train_json=shapes/train.json data.train_images=shapes/images",
    )
    _train_arguments(p)
    p.set_defaults(func=run_train)
    return p


def _run_synthetic(args: argparse.Namespace) -> int:
    from glip.data import generate_synthetic

    ds = generate_synthetic(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size if args.max_image_size is None else (args.image_size, args.max_image_size),
        seed=args.seed,
        held_out=args.held_out,
    )
    print(f"wrote {ds.train_json}, {ds.val_json} and {ds.image_dir}/ ({len(ds.categories)} categories)")
    if ds.held_out:
        print("held out of training: " + ", ".join(ds.held_out))
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="dataset utilities", description="Dataset utilities.")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = sub.add_parser(
        "synthetic",
        help="write a synthetic shapes dataset (COCO jsons + PNGs)",
        description="Coloured shapes on noisy backgrounds: OUT/train.json, OUT/val.json, OUT/images/. "
        "Train on it with data.train_json=OUT/train.json data.train_images=OUT/images.",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-train", type=int, default=160)
    s.add_argument("--num-val", type=int, default=40)
    s.add_argument("--image-size", type=int, default=128, help="side (or the minimum side with --max-image-size)")
    s.add_argument("--max-image-size", type=int, help="draw each side in [image-size, max-image-size]")
    s.add_argument("--held-out", type=int, default=0, help="colour-shape combinations kept out of training")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_run_synthetic)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_train(build_train_parser().parse_args(argv))
