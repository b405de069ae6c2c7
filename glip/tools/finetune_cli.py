"""``glip finetune``: argument parsing for :func:`glip.tools.finetune.finetune`."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_finetune_parser", "run_finetune"]


def run_finetune(args: argparse.Namespace) -> int:
    import logging

    from glip.config import load_config
    from glip.hub.zoo import ZOO, zoo_config
    from glip.tools.finetune import TransferData, finetune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    weights = args.weights or args.model
    if args.config:
        config = args.config
    elif weights in ZOO and not Path(weights).exists():
        config = zoo_config(ZOO[weights].config)
    else:
        config = Path(weights) / "config.yaml"
    cfg = load_config(config)
    if args.data:
        data = TransferData.from_dir(args.data)
    else:
        if not (args.train_json and args.val_json and args.images):
            raise ValueError("give --data DIR, or --train-json, --val-json and --images")
        images = Path(args.images)
        data = TransferData(
            Path(args.train_json).stem, Path(args.train_json), images, Path(args.val_json), images,
            Path(args.test_json) if args.test_json else None, images if args.test_json else None,
        )  # fmt: skip
    out = args.out or f"glip_finetune/{data.name}_{args.mode}_shot{args.shots}_seed{args.seed}"
    metrics = finetune(
        cfg, data, out, weights=weights, mode=args.mode, shots=args.shots, seed=args.seed,
        overrides=args.overrides, official_schedule=not args.no_official_schedule,
        cpu=True if args.cpu else None, progress_bar=not args.quiet,
    )  # fmt: skip
    print(f"{data.name} {args.mode} {args.shots}-shot seed {args.seed}: test AP {metrics.get('AP', float('nan')):.4f}")
    print(f"tuned model: {out}/model (glip detect --weights {out}/model ...)")
    return 0


def add_finetune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune",
        help="transfer GLIP to a COCO-format dataset: full, linear probing or prompt tuning",
        description="Fine-tune on a custom COCO-format dataset with the official ODinW recipe (k-shot subset, "
        "per-shot schedule, evaluation every epoch, early stopping). Linear and prompt modes save only the "
        "tensors they train (OUT/model/tuned.json + delta.safetensors), loadable by glip.load_model and "
        "--weights.",
        epilog="example: glip finetune --data shapes --mode prompt --shots 5 --seed 30 --weights runs/tiny/model "
        "--out runs/prompt5",
    )
    p.add_argument("--data", help="a folder with train.json, val.json (test.json) and images/")
    p.add_argument("--train-json")
    p.add_argument("--val-json")
    p.add_argument("--test-json", help="final AP (default: the validation set)")
    p.add_argument("--images", help="image folder of the explicit jsons")
    p.add_argument("--mode", default="prompt", help="full | linear | prompt (| prompt_v1 | prompt_v3 | prompt_v4)")
    p.add_argument("--shots", type=int, default=0, help="1, 3, 5 or 10 shots per class; 0: all data")
    p.add_argument("--seed", type=int, default=3, help="k-shot sampling seed (official 3, 30, 300)")
    p.add_argument("--model", default="glip-t", help="model-zoo base (default glip-t)")
    p.add_argument("--weights", help="base weights: a glip folder or official .pth (instead of --model)")
    p.add_argument("--config", help="the config of an official .pth base")
    p.add_argument("--out", help="output folder")
    p.add_argument("--no-official-schedule", action="store_true", help="use the config's solver settings as they are")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied last")
    p.set_defaults(func=run_finetune)
    return p
