"""The few-shot transfer protocol: datasets x shots x seeds, mean +- std AP. Resumable.

ODinW (the official splits; the train split is the ``train/`` sibling of the ``valid/``
folder the suite lists):
    python scripts/odinw_transfer.py --odinw-root DATA --suite odinw13 --mode prompt \
        --weights glip-t --out runs/odinw_prompt
Custom COCO-format folders (train.json, val.json, images/, as `glip data synthetic` writes):
    python scripts/odinw_transfer.py --data shapes_a shapes_b --shots 1 3 --seeds 3 30 \
        --weights runs/tiny/model --mode prompt --out runs/grid solver.max_epoch=2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def odinw_transfer_data(root: str | Path, suite: str, names: Sequence[str] | None = None) -> list:
    from glip.evaluation import odinw_suite
    from glip.tools.finetune import TransferData

    out = []
    for ds in odinw_suite(suite):
        if names and ds.name not in names:
            continue
        val_json, val_images = ds.files(root, "val" if "val" in ds.splits else None)
        test_json, test_images = ds.files(root, "test") if "test" in ds.splits else (None, None)
        train_images = val_images.parent / "train"
        out.append(TransferData(
            ds.name, train_images / val_json.name, train_images, val_json, val_images, test_json, test_images,
            ds.categories, ds.caption_prompt,
        ))  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="*", default=[], help="custom dataset folders")
    p.add_argument("--odinw-root", help="folder holding odinw/")
    p.add_argument("--suite", default="odinw13")
    p.add_argument("--datasets", nargs="*", help="only these ODinW datasets")
    p.add_argument("--mode", default="prompt")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 30, 300])
    p.add_argument("--weights", required=True, help="base: zoo name, glip folder or official .pth")
    p.add_argument("--config", help="config of the base (default: the folder's or the zoo's)")
    p.add_argument("--out", required=True)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from glip.hub.sources import resolve_model_source
    from glip.tools.finetune import TransferData, run_transfer_grid

    datasets = [TransferData.from_dir(d) for d in args.data]
    if args.odinw_root:
        datasets += odinw_transfer_data(args.odinw_root, args.suite, args.datasets)
    if not datasets:
        p.error("give --data folders or --odinw-root")
    config = resolve_model_source(args.weights, args.config).load_config()
    run_transfer_grid(
        config, datasets, args.out, weights=args.weights, mode=args.mode, shots=args.shots,
        seeds=args.seeds, overrides=args.overrides, cpu=True if args.cpu else None,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
