"""``glip finetune``: argument parsing for :func:`glip.tools.finetune.finetune`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from glip.tools.common import (
    add_device_arg,
    add_model_args,
    add_output_arg,
    add_overrides_arg,
    add_quiet_arg,
    check_overrides,
    model_arg,
)

if TYPE_CHECKING:
    from glip.tools.finetune_tasks import TaskData

__all__ = ["add_finetune_parser", "run_finetune"]


def _transfer_data(args: argparse.Namespace) -> object:
    from glip.tools.finetune import TransferData

    if args.data:
        if args.train_json or args.val_json or args.images:
            raise ValueError("give --data DIR or --train-json/--val-json/--images, not both")
        return TransferData.from_dir(args.data)
    if not (args.train_json and args.val_json and args.images):
        raise ValueError("give --data DIR, or --train-json, --val-json and --images")
    images = Path(args.images)
    for path in (args.train_json, args.val_json, args.test_json):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    return TransferData(
        Path(args.train_json).stem, Path(args.train_json), images, Path(args.val_json), images,
        Path(args.test_json) if args.test_json else None, images if args.test_json else None,
    )  # fmt: skip


def _task_data(args: argparse.Namespace) -> TaskData:
    from glip.tools.finetune_tasks import TaskData

    if args.shots or args.test_json:
        raise ValueError(f"--task {args.task} takes neither --shots nor --test-json (the validation json is tested)")
    if args.data:
        if args.train_json or args.val_json or args.images:
            raise ValueError("give --data DIR or --train-json/--val-json/--images, not both")
        return TaskData.from_dir(args.task, args.data)
    if not (args.train_json and args.val_json and args.images):
        raise ValueError("give --data DIR, or --train-json, --val-json and --images")
    return TaskData.from_files(args.task, args.train_json, args.val_json, args.images)


def _run_task(args: argparse.Namespace) -> int:
    """``glip finetune --task vqa|caption``: :func:`glip.tools.finetune_tasks.finetune_task`."""
    import logging

    from glip.hub.sources import resolve_model_source
    from glip.tools.finetune_tasks import finetune_task, task_overrides
    from glip.tools.train_cli import device_is_cpu

    check_overrides(args.overrides)
    data = _task_data(args)
    mode = args.mode or ""
    preset = task_overrides(data, mode)
    weights = model_arg(args)
    source = resolve_model_source(weights, args.config, text_encoder=args.text_encoder)
    cfg = source.load_config([f"model.text.encoder={args.text_encoder}"] if args.text_encoder else [])
    check_overrides([*preset, *args.overrides], cfg)  # unknown keys and bad values fail before training
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or f"glip_finetune/{data.name}_{args.task}_{mode or 'config'}"
    summary = finetune_task(
        cfg, data, out, weights=weights, mode=mode, overrides=args.overrides, cpu=device_is_cpu(args.device),
        progress_bar=not args.quiet, trust_pickle=args.trust_pickle, resume=args.resume,
    )  # fmt: skip
    print(f"{data.name} {args.task} ({summary['steps']} steps): {summary['metric']} {summary['score']:.4f}")
    print(f"tuned model: {out}/model (metrics in {out}/metrics.json)")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    """``glip finetune``; exit status 0, or 128 + signal when interrupted (one line says how
    to continue: the same command with ``--resume``)."""
    from glip.engine import TrainingInterrupted

    try:
        return _run_detection(args) if args.task == "detection" else _run_task(args)
    except TrainingInterrupted as e:
        print(f"glip finetune: {e}; to continue, run the same command with --resume")
        return 128 + int(e.result.interrupted_by or 0)


def _run_detection(args: argparse.Namespace) -> int:
    import logging

    from glip.hub.sources import resolve_model_source
    from glip.tools.finetune import finetune, shots_label, transfer_overrides
    from glip.tools.train_cli import device_is_cpu

    args.mode = args.mode or "prompt"
    check_overrides(args.overrides)
    preset = transfer_overrides(args.mode, args.shots, solver=not args.no_official_schedule)
    data = _transfer_data(args)
    cpu = device_is_cpu(args.device)
    weights = model_arg(args)
    source = resolve_model_source(weights, args.config, text_encoder=args.text_encoder)
    text = [f"model.text.encoder={args.text_encoder}"] if args.text_encoder else []
    cfg = source.load_config(text)
    check_overrides([*preset, *args.overrides], cfg)  # unknown keys and bad values fail before training
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or f"glip_finetune/{data.name}_{args.mode}_shot{args.shots}_seed{args.seed}"
    metrics = finetune(
        cfg, data, out, weights=weights, mode=args.mode, shots=args.shots, seed=args.seed,
        overrides=args.overrides, official_schedule=not args.no_official_schedule,
        cpu=cpu, progress_bar=not args.quiet, trust_pickle=args.trust_pickle, resume=args.resume,
    )  # fmt: skip
    ap = f"test AP {100 * metrics.get('AP', float('nan')):.1f}"  # the 0-100 scale of glip evaluate
    if "segm_AP" in metrics:
        ap += f", mask AP {100 * metrics['segm_AP']:.1f}"
    print(f"{data.name} {args.mode} {shots_label(args.shots)} seed {args.seed}: {ap}")
    print(f"tuned model: {out}/model (glip detect --weights {out}/model ...)")
    return 0


def add_finetune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune",
        help="transfer GLIP to a COCO-format dataset (full, linear probing or prompt tuning), or fine-tune "
        "its VQA or caption head (--task)",
        description="Fine-tune on a custom COCO-format dataset with the official ODinW recipe (k-shot subset, "
        "per-shot schedule, evaluation every epoch, early stopping). Linear and prompt modes save only the "
        "tensors they train (OUT/model/tuned.json + delta.safetensors), loadable by glip.load_model and "
        "--weights. --task vqa|caption adds and trains the answer or caption head with the config's solver and "
        "tests it with VQA accuracy or CIDEr.",
        epilog="examples:\n"
        "  glip finetune --data shapes --mode prompt --shots 5 --seed 30 --model demo-shapes --out runs/prompt5\n"
        "  glip finetune --data my_roboflow_export --mode linear --model glip-t --out runs/linear\n"
        "  glip finetune --data shapes --mode mask --model demo-shapes --out runs/mask   (masks in the data)\n"
        "  glip finetune --task vqa --data shapes --model demo-shapes --out runs/vqa solver.max_iter=1000\n"
        "  glip finetune --task caption --data shapes --model demo-shapes --mode head --out runs/caption",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        help="a dataset folder: a Roboflow/ODinW export (train/, valid/, test/ each with _annotations.coco.json "
        "and its images) or what `glip data synthetic` writes (train.json, val.json, images/)",
    )
    p.add_argument("--train-json")
    p.add_argument("--val-json")
    p.add_argument("--test-json", help="final AP (default: the validation set)")
    p.add_argument("--images", help="image folder of the explicit jsons")
    p.add_argument(
        "--task",
        choices=("detection", "vqa", "caption"),
        default="detection",
        help="detection (default: the ODinW transfer recipe on a COCO-format dataset); vqa or caption: add and "
        "train that head (--data DIR holds vqa_train.json + vqa_val.json or captions_train.json + "
        "captions_val.json beside images/, as `glip data synthetic` writes), then test VQA accuracy or CIDEr",
    )
    p.add_argument(
        "--mode",
        help="detection: full | linear | prompt (default) (| prompt_v1 | prompt_v3 | prompt_v4) | mask (the mask "
        "head alone, the rest frozen; added to a detection model). vqa/caption: what the config trains (default), "
        "full, or head (the task's head alone)",
    )
    p.add_argument("--shots", type=int, default=0, help="1, 3, 5 or 10 shots per class; 0: all data")
    p.add_argument("--seed", type=int, default=3, help="k-shot sampling seed (official 3, 30, 300)")
    p.add_argument(
        "--no-official-schedule",
        action="store_true",
        help="use the config's solver settings as they are (the official data recipe still applies)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (give the same arguments; a finished run is left "
        "as it is)",
    )
    add_output_arg(p, help="output folder (default glip_finetune/NAME_MODE_shotK_seedS)")
    add_device_arg(p, help="cpu or cuda (default: cuda when available)")
    add_quiet_arg(p)
    add_model_args(p, model_help="the base model: a model-zoo name (default glip-t)")
    add_overrides_arg(p)
    p.set_defaults(func=run_finetune)
    return p
