"""``glip evaluate``: argument parsing, and the task table (:data:`EVAL_TASKS`) that dispatches\nto the evaluation runners."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip.tools.common import (
    add_device_arg,
    add_model_args,
    add_output_arg,
    add_quiet_arg,
    add_threshold_arg,
    check_threshold,
    model_arg,
    parse_device,
)

__all__ = ["EVAL_TASKS", "EvalTask", "add_evaluate_parser", "resolve_detection_files"]

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
  glip evaluate --task coco --data my_roboflow_export --split test --model demo-shapes   (Roboflow/ODinW folder)
  glip evaluate --task coco --ann instances_val2017.json --results results.json   (no model)
  glip evaluate --task vqa --ann shapes/vqa_val.json --images shapes/images --weights runs/vqa/model
  glip evaluate --task lvis --data DATASET/coco --model MASK_MODEL --iou-type bbox segm
  glip evaluate --task phrasecut --data VGPhraseCut_v0 --split test --model MASK_MODEL   (refer_test.json, images/)
  glip evaluate --task phrasecut --ann shapes/phrasecut_val.json --results results.json   (no model)
  glip evaluate --task caption --ann captions_val.json --images DIR --weights runs/caption/model   (CIDEr, BLEU-4...)
  accelerate launch --num_processes 8 -m glip.cli evaluate --task coco ...   (predictions gathered)"""


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``evaluate`` on the ``glip`` command's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="zero-shot evaluation on COCO, LVIS, ODinW, Flickr30k, RefCOCO or PhraseCut; or score a results file",
        description="Evaluate a model on a dataset (prints a table, writes OUT/metrics.json and OUT/results.json), "
        "or score an existing COCO-results file with --ann and --results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=tuple(EVAL_TASKS))
    p.add_argument(
        "--data",
        help="annotation json (coco, lvis, flickr, refcoco), a dataset folder (coco: annotations/instances_val2017.json "
        "+ val2017/, a Roboflow/ODinW export with valid/_annotations.coco.json, or what `glip data synthetic` writes; "
        "lvis: annotations/lvis_*.json + val2017/), or for odinw the folder holding odinw/",
    )
    p.add_argument("--images", help="image folder (default: beside the annotation json, or the --data folder)")
    p.add_argument("--ann", help="ground-truth annotation json (overrides --data's)")
    p.add_argument("--results", help="score this COCO-results json against --ann; no model is run")
    p.add_argument(
        "--iou-type",
        nargs="+",
        choices=("bbox", "segm"),
        default=["bbox"],
        help="coco, lvis: box AP (bbox, default), mask AP (segm: the model needs a mask head, or the results "
        "masks), or both",
    )
    add_model_args(p)
    add_device_arg(p, help="cpu, cuda, cuda:1... (default: cuda when available; cuda:LOCAL_RANK when launched)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1, as the official)")
    p.add_argument(
        "--chunk-size", type=int, help="classes per prompt (default: 40 for lvis, else only past 256 tokens)"
    )
    p.add_argument("--topk", type=int, default=10000, help="lvis Fixed AP: detections kept per class (default 10000)")
    add_threshold_arg(
        p,
        default=0.7,
        help="phrasecut: detections scoring above it form the phrase's mask (default 0.7, MDETR's)",
        aliases=("--score-threshold",),
    )
    from glip.evaluation.vqa import DEFAULT_VQA_RULE, VQA_RULES

    p.add_argument(
        "--vqa-rule",
        choices=VQA_RULES,
        default=DEFAULT_VQA_RULE,
        help="vqa: the official file whose answer comparison is used: evalai (Cloud-CV/VQA-Evaluation, the server "
        "that scores published numbers; default) or vqa-api (GT-Vision-Lab/VQA master since 2021); see docs/evaluation.md",
    )
    p.add_argument("--suite", default="odinw13", choices=("odinw13", "odinw35"), help="odinw suite (default odinw13)")
    p.add_argument("--datasets", help="odinw: comma-separated dataset names of the suite to run (default: all)")
    p.add_argument(
        "--split",
        help="odinw: split to evaluate (default: the official one, val or minival; or test); a dataset folder "
        "(--task coco): train, val or test (default val)",
    )
    add_output_arg(p, default="glip_eval")
    add_quiet_arg(p)
    p.set_defaults(func=_cmd_evaluate)
    return p


def resolve_detection_files(
    task: str, data: str | None, ann: str | None, images: str | None, split: str | None = None
) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` from ``--data``/``--ann``/``--images``.

    A ``--data`` folder is, in order: a COCO/LVIS release (``annotations/...``), a
    Roboflow/ODinW export or a ``glip data synthetic`` folder (:func:`glip.data.read_dataset_dir`;
    ``split`` picks train, val (default) or test), or one split folder holding
    ``_annotations.coco.json``."""
    from glip.data.layout import ROBOFLOW_ANNOTATIONS, read_dataset_dir

    ann_path = Path(ann) if ann else None
    root = Path(data) if data else None
    if ann_path is None and root is not None and root.is_dir() and task == "coco":
        if (root / ROBOFLOW_ANNOTATIONS).is_file():  # one split folder of an export
            return resolve_detection_files(task, None, str(root / ROBOFLOW_ANNOTATIONS), images or str(root))
        if not (root / _COCO_ANNOTATIONS[0]).is_file():  # not a COCO release: a Roboflow or synthetic folder?
            try:
                layout = read_dataset_dir(root)
            except FileNotFoundError:
                layout = None
            if layout is not None:
                chosen = layout.split(split or "val")
                return resolve_detection_files(task, None, str(chosen.json), images or str(chosen.images))
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


@dataclass(frozen=True)
class EvalTask:
    """One ``glip evaluate --task`` entry. ``run(args) -> exit status`` does the whole task: a
    model's predictions scored, or a ``--results`` file scored without a model, where the task
    takes one. ``iou_types``: the ``--iou-type`` values it accepts (None: it reads no
    ``--iou-type``)."""

    run: Callable[[argparse.Namespace], int]
    iou_types: tuple[str, ...] | None = ("bbox",)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    task = EVAL_TASKS[args.task]  # argparse's choices refuse another name, listing these
    if task.iou_types is not None and not set(args.iou_type) <= set(task.iou_types):
        masked = " and ".join(n for n, t in EVAL_TASKS.items() if t.iou_types and "segm" in t.iou_types)
        raise ValueError(f"--iou-type segm (mask AP) is implemented for --task {masked}, not {args.task}")
    from glip.utils.distributed import shutdown_distributed

    try:
        return task.run(args)
    finally:
        shutdown_distributed()  # under a distributed launch: every rank exits 0 after its part


def _check_batching(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {args.chunk_size}")


def _no_results(args: argparse.Namespace) -> None:
    if args.results:
        raise ValueError("--results scores detection results: use --task coco or lvis")


def _predictor(args: argparse.Namespace, **options: Any) -> Any:
    """The model's :class:`glip.api.Predictor` on ``--device`` (``cuda:LOCAL_RANK`` under a
    distributed launch); ``options``: more of its keyword arguments."""
    from glip.api import Predictor
    from glip.utils.distributed import init_distributed, local_device

    distributed = init_distributed()
    device = parse_device(args.device) or (local_device() if distributed else None)
    return Predictor(
        model_arg(args), config=args.config, text_encoder=args.text_encoder, device=device,
        trust_pickle=args.trust_pickle, **options,
    )  # fmt: skip


def _wrote_metrics(args: argparse.Namespace) -> int:
    from glip.utils.distributed import is_main_process

    if is_main_process():
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def _run_detection(args: argparse.Namespace) -> int:
    """``--task coco|lvis``: box (and mask) AP of the model, or of a ``--results`` file."""
    from glip.tools.evaluate import evaluate_detection, metrics_table, score_results_file

    if args.results:
        if not args.ann:
            raise ValueError("--results needs the ground truth: --ann GT.json")
        metrics = score_results_file(args.task, args.ann, args.results, args.out, iou_types=args.iou_type)
        print(metrics_table(args.task, metrics, f"{args.task} ({Path(args.results).name})"))
        print(f"wrote {Path(args.out) / 'metrics.json'}")
        return 0
    _check_batching(args)
    ann_file, image_dir = resolve_detection_files(
        args.task, args.data, args.ann, args.images, args.split
    )  # no model yet
    predictor = _predictor(args, batch_size=args.batch_size, masks="segm" in args.iou_type)
    metrics = evaluate_detection(
        predictor, ann_file, image_dir, task=args.task, out_dir=args.out, batch_size=args.batch_size,
        chunk_size=args.chunk_size, topk=args.topk, progress=not args.quiet, iou_types=args.iou_type,
    )  # fmt: skip
    if metrics is not None:
        print(metrics_table(args.task, metrics, f"{args.task} ({ann_file.name})"))
    return _wrote_metrics(args)


def _run_odinw(args: argparse.Namespace) -> int:
    """``--task odinw``: the suite's datasets (``--datasets``), resumable (glip.tools.odinw)."""
    from glip.evaluation import odinw_suite
    from glip.tools.odinw import check_odinw_data, run_odinw

    _no_results(args)
    _check_batching(args)
    if not args.data:
        raise ValueError("--task odinw needs --data, the folder holding odinw/")
    datasets = list(odinw_suite(args.suite))
    if args.datasets:
        wanted = [n.strip() for n in args.datasets.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {d.name for d in datasets})
        if unknown:
            raise ValueError(f"not in {args.suite}: {', '.join(unknown)}")
        datasets = [d for d in datasets if d.name in wanted]
    check_odinw_data(datasets, args.data, args.split)  # before the model is loaded
    predictor = _predictor(args, batch_size=args.batch_size, masks=False)
    run_odinw(
        predictor, args.data, args.out, datasets=datasets, split=args.split, batch_size=args.batch_size,
        progress=not args.quiet,
    )  # fmt: skip
    return _wrote_metrics(args)


def _run_grounding(args: argparse.Namespace) -> int:
    """``--task flickr|refcoco``: phrase grounding recall (glip.tools.evaluate_grounding)."""
    from glip.tools.evaluate_grounding import evaluate_grounding, grounding_table

    _no_results(args)
    _check_batching(args)
    ann_file, image_dir = resolve_detection_files(args.task, args.data, args.ann, args.images, args.split)
    predictor = _predictor(args, batch_size=args.batch_size, masks=False)
    metrics = evaluate_grounding(predictor, ann_file, image_dir, task=args.task, out_dir=args.out,
                                 progress=not args.quiet)  # fmt: skip
    if metrics is not None:
        print(grounding_table(metrics))
    return _wrote_metrics(args)


def _run_phrasecut(args: argparse.Namespace) -> int:
    """``--task phrasecut``: referring segmentation (glip.tools.evaluate_phrasecut)."""
    from glip.tools.evaluate_phrasecut import (
        evaluate_phrasecut,
        phrasecut_table,
        resolve_phrasecut_files,
        score_phrasecut,
    )

    check_threshold(args.threshold)
    if args.results:
        if not args.ann:
            raise ValueError("--results needs the ground truth: --ann REFER.json")
        metrics = score_phrasecut(args.ann, args.results, args.images, out_dir=args.out, score_threshold=args.threshold)
        print(phrasecut_table(metrics, f"phrasecut ({Path(args.results).name})"))
        print(f"wrote {Path(args.out) / 'metrics.json'}")
        return 0
    refer, image_dir = resolve_phrasecut_files(args.data, args.ann, args.images, args.split)
    predictor = _predictor(args, masks=True)
    metrics = evaluate_phrasecut(
        predictor, refer, image_dir, out_dir=args.out, score_threshold=args.threshold, progress=not args.quiet
    )
    if metrics is not None:
        print(phrasecut_table(metrics, f"phrasecut ({refer.name})"))
    return _wrote_metrics(args)


def _run_vqa(args: argparse.Namespace) -> int:
    """``--task vqa``: VQA accuracy, of a model or a results file (glip.tools.vqa_cli)."""
    from glip.tools.vqa_cli import run_evaluate_vqa

    return run_evaluate_vqa(args)


def _run_caption(args: argparse.Namespace) -> int:
    """``--task caption``: CIDEr, BLEU-4... of a model or a results file (glip.tools.caption_cli)."""
    from glip.tools.caption_cli import evaluate_captioning

    return evaluate_captioning(args)


# ``glip evaluate --task NAME``: what each name runs. A new task is one entry here.
EVAL_TASKS: dict[str, EvalTask] = {
    "coco": EvalTask(_run_detection, iou_types=("bbox", "segm")),
    "lvis": EvalTask(_run_detection, iou_types=("bbox", "segm")),
    "odinw": EvalTask(_run_odinw),
    "flickr": EvalTask(_run_grounding),
    "refcoco": EvalTask(_run_grounding),
    "phrasecut": EvalTask(_run_phrasecut, iou_types=None),  # masks always; --iou-type is not read
    "vqa": EvalTask(_run_vqa),
    "caption": EvalTask(_run_caption, iou_types=None),
}
