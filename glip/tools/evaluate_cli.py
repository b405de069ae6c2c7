"""``glip evaluate``: argument parsing and dispatch to the evaluation runners."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_evaluate_parser", "resolve_detection_files"]

TASKS = ("coco", "lvis", "odinw", "flickr", "refcoco")
# Standard file names tried when --data is a folder.
_COCO_ANNOTATIONS = ("annotations/instances_val2017.json", "val.json")
_LVIS_ANNOTATIONS = (
    "annotations/lvis_v1_minival_inserted_image_name.json",  # official minival (lvis/minival.yaml)
    "annotations/lvis_od_val.json",  # official val (lvis/val.yaml)
    "annotations/lvis_v1_val.json",
)

EPILOG = """examples:
  glip evaluate --task coco --data coco/annotations/instances_val2017.json --images coco/val2017 --model glip-t
  glip evaluate --task lvis --data DATASET/coco --model glip-t --out eval_lvis
  glip evaluate --task odinw --suite odinw35 --data DATASET --model glip-t --out eval_odinw   (resumable)
  glip evaluate --task flickr --data mdetr_annotations/final_flickr_separateGT_test.json --images flickr30k/images
  glip evaluate --task coco --ann instances_val2017.json --results results.json   (no model)
  accelerate launch --num_processes 8 -m glip.cli evaluate --task coco ...   (predictions gathered)"""


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``evaluate`` on the ``glip`` command's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="zero-shot evaluation on COCO, LVIS, ODinW, Flickr30k or RefCOCO; or score a results file",
        description="Evaluate a model on a dataset (prints a table, writes OUT/metrics.json and OUT/results.json), "
        "or score an existing COCO-results file with --ann and --results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument(
        "--data",
        help="annotation json (coco, lvis, flickr, refcoco), a dataset folder (coco: annotations/instances_val2017.json "
        "+ val2017/; lvis: annotations/lvis_*.json + val2017/), or for odinw the folder holding odinw/",
    )
    p.add_argument("--images", help="image folder (default: beside the annotation json, or the --data folder)")
    p.add_argument("--ann", help="ground-truth annotation json (overrides --data's)")
    p.add_argument("--results", help="score this COCO-results json against --ann; no model is run")
    p.add_argument("--model", default="glip-t", help="model-zoo name (default glip-t)")
    p.add_argument("--weights", help="a checkpoint (official .pth or converted folder) instead of --model")
    p.add_argument("--config", help="official GLIP yaml or a glip config (for an official .pth)")
    p.add_argument("--text-encoder", help="Hugging Face name or local folder of the text encoder")
    p.add_argument(
        "--device", help="cpu, cuda, cuda:1... (default: cuda when available; cuda:LOCAL_RANK when launched)"
    )
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1, as the official)")
    p.add_argument(
        "--chunk-size", type=int, help="classes per prompt (default: 40 for lvis, else only past 256 tokens)"
    )
    p.add_argument("--topk", type=int, default=10000, help="lvis Fixed AP: detections kept per class (default 10000)")
    p.add_argument("--suite", default="odinw13", choices=("odinw13", "odinw35"), help="odinw suite (default odinw13)")
    p.add_argument("--datasets", help="odinw: comma-separated dataset names of the suite to run (default: all)")
    p.add_argument("--split", help="odinw: split to evaluate (default: the official one, val or minival; or test)")
    p.add_argument("--out", default="glip_eval", help="output folder (default ./glip_eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)
    return p


def resolve_detection_files(task: str, data: str | None, ann: str | None, images: str | None) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` from ``--data``/``--ann``/``--images``."""
    ann_path = Path(ann) if ann else None
    root = Path(data) if data else None
    if ann_path is None:
        if root is None:
            raise ValueError(f"--task {task} needs --data (or --ann)")
        if root.is_file():
            ann_path = root
        elif root.is_dir():
            names = {"coco": _COCO_ANNOTATIONS, "lvis": _LVIS_ANNOTATIONS}.get(task, ())
            found = [root / n for n in names if (root / n).is_file()]
            if not found:
                raise FileNotFoundError(f"no annotation file under {root} (looked for {', '.join(names)}); use --ann")
            ann_path = found[0]
        else:
            raise FileNotFoundError(f"--data {root} does not exist")
    if not ann_path.is_file():
        raise FileNotFoundError(f"annotation file {ann_path} does not exist")
    if images:
        image_dir = Path(images)
    elif root is not None and root.is_dir():
        image_dir = root / "val2017" if task == "coco" and (root / "val2017").is_dir() else root
    else:
        image_dir = ann_path.parent
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist")
    return ann_path, image_dir


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.results:
        from glip.tools.evaluate import metrics_table, score_results_file

        if args.task not in ("coco", "lvis"):
            raise ValueError("--results scores detection results: use --task coco or lvis")
        if not args.ann:
            raise ValueError("--results needs the ground truth: --ann GT.json")
        metrics = score_results_file(args.task, args.ann, args.results, args.out)
        print(metrics_table(args.task, metrics, f"{args.task} ({Path(args.results).name})"))
        print(f"wrote {Path(args.out) / 'metrics.json'}")
        return 0
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {args.chunk_size}")

    # Check the data before loading a model.
    datasets = None
    if args.task == "odinw":
        from glip.evaluation import odinw_suite
        from glip.tools.odinw import check_odinw_data

        if not args.data:
            raise ValueError("--task odinw needs --data, the folder holding odinw/")
        datasets = list(odinw_suite(args.suite))
        if args.datasets:
            wanted = [n.strip() for n in args.datasets.split(",") if n.strip()]
            unknown = sorted(set(wanted) - {d.name for d in datasets})
            if unknown:
                raise ValueError(f"not in {args.suite}: {', '.join(unknown)}")
            datasets = [d for d in datasets if d.name in wanted]
        check_odinw_data(datasets, args.data, args.split)
    else:
        ann_file, image_dir = resolve_detection_files(args.task, args.data, args.ann, args.images)

    from glip.api import Predictor
    from glip.utils.distributed import init_distributed, is_main_process, local_device

    distributed = init_distributed()
    device = args.device or (local_device() if distributed else None)
    predictor = Predictor(
        args.weights or args.model,
        config=args.config,
        text_encoder=args.text_encoder,
        device=device,
        batch_size=args.batch_size,
    )
    progress = not args.quiet
    if args.task == "odinw":
        from glip.tools.odinw import run_odinw

        run_odinw(
            predictor,
            args.data,
            args.out,
            datasets=datasets,
            split=args.split,
            batch_size=args.batch_size,
            progress=progress,
        )
    elif args.task in ("coco", "lvis"):
        from glip.tools.evaluate import evaluate_detection, metrics_table

        metrics = evaluate_detection(
            predictor,
            ann_file,
            image_dir,
            task=args.task,
            out_dir=args.out,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            topk=args.topk,
            progress=progress,
        )
        if metrics is not None:
            print(metrics_table(args.task, metrics, f"{args.task} ({ann_file.name})"))
    else:
        from glip.tools.evaluate_grounding import evaluate_grounding, grounding_table

        metrics = evaluate_grounding(
            predictor, ann_file, image_dir, task=args.task, out_dir=args.out, progress=progress
        )
        if metrics is not None:
            print(grounding_table(metrics))
    if is_main_process():
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
