"""GLIP's self-training on synthetic shapes: a teacher grounds captions, a student learns
from those pseudo-labels alone, and both are evaluated on the same validation images.

    python scripts/self_training.py --work runs/self-training                 # demo-shapes as teacher
    python scripts/self_training.py --teacher runs/demo/train/model --threshold 0.5 --steps 1200

1. ``generate_synthetic`` writes a fresh synthetic set (another seed than the demo's
   training set): images, ``val.json`` (boxes) and ``captions_train.json`` (one sentence
   per training image naming its shapes, colours and a spatial relation). The training
   boxes are never read.
2. The teacher (a zoo name or a model folder) pseudo-labels the training captions through
   ``glip pseudo-label``'s Python API (:mod:`glip.tools.pseudo_label`: the offline noun
   phrase chunker, boxes scoring above ``--threshold``) into ``WORK/pseudo.json``.
3. A student (``configs/synthetic/tiny.yaml``, fresh initialisation: the recipe of
   ``scripts/train_demo.py``'s GLIP stage) trains ONLY on ``pseudo.json``
   (``data.format=mdetr``, ``data.pseudo_labelled=true``) with :func:`glip.engine.train`.
4. Teacher and student (its final weights and its EMA) are evaluated as
   ``scripts/train_demo.py`` evaluates the demo: COCO box AP / AP50 (pycocotools) on the
   validation images, every category prompted. The script prints the table and the gap
   (teacher minus student) and writes ``WORK/report.json``.

Every stage resumes: the labelling skips the images its shards hold, the training continues
from its last checkpoint (``WORK/student/checkpoints``); run the same command again after
an interruption. The bundled demo teacher scores its best boxes around 0.3-0.6, hence the
default ``--threshold 0.2`` (the official caption threshold, 0.5, suits GLIP-T / GLIP-L).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def _train_demo() -> Any:
    """scripts/train_demo.py as a module (its ``evaluate``)."""
    if "train_demo" in sys.modules:
        return sys.modules["train_demo"]
    spec = importlib.util.spec_from_file_location("train_demo", REPO / "scripts" / "train_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo"] = module  # registered first: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/self-training", help="data, pseudo-labels, student run, report")
    p.add_argument("--teacher", default="demo-shapes", help="teacher: a zoo name or a model folder (demo-shapes)")
    p.add_argument("--num-train", type=int, default=400, help="captioned training images (400)")
    p.add_argument("--num-val", type=int, default=80, help="validation images (80)")
    p.add_argument("--image-size", type=int, nargs=2, default=(128, 192), metavar=("MIN", "MAX"),
                   help="image sides drawn in [MIN, MAX] (128 192, as the demo)")  # fmt: skip
    p.add_argument("--max-objects", type=int, default=5, help="shapes per image, at most (5)")
    p.add_argument("--seed", type=int, default=1, help="data and training seed (1; the demo trained on seed 0)")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="teacher boxes scoring above this are kept (0.2: the demo teacher scores ~0.3-0.6)")  # fmt: skip
    p.add_argument("--nms", type=float, default=-1.0, help="class-agnostic NMS IoU over a caption's boxes (-1: none)")
    p.add_argument("--min-boxes", type=int, default=1, help="captions with fewer boxes are left out (1)")
    p.add_argument("--steps", type=int, default=1200, help="student training steps (1200, as the demo)")
    p.add_argument("--batch", type=int, default=8, help="student images per step (8)")
    p.add_argument("--device", default="cpu", help="where the teacher labels and the models are evaluated (cpu)")
    p.add_argument("--student-init", default=None, metavar="FOLDER",
                   help="weights the student starts from (e.g. scripts/train_demo.py's visual pre-training, "
                        "WORK/init; with its DEMO_RECIPE as overrides); default: fresh")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="student config overrides (tiny.yaml)")
    return p.parse_args(argv)


def pseudo_label(args: argparse.Namespace, captions: Path, image_dir: Path, out: Path, teacher_model: Any) -> Any:
    """Labels the captions with the teacher (resumable) and merges ``out``; returns the summary."""
    from glip.tools.pseudo_label import (
        PseudoLabelSettings,
        ShardStore,
        file_digest,
        label_images,
        merge_shards,
        read_caption_items,
    )
    from glip.tools.teachers import GlipTeacher, build_chunker

    items = read_caption_items(captions)
    store = ShardStore(out.with_name(out.name + ".shards"))
    model = {"model": str(args.teacher), "config": None}
    settings = PseudoLabelSettings(
        file_digest(captions), len(items), args.threshold, args.nms, args.min_boxes, "glip", "offline", model
    )
    teacher = GlipTeacher(teacher_model, args.threshold)
    label_images(items, image_dir, teacher, build_chunker("offline"), store, settings, progress=not args.quiet)
    return merge_shards(items, store, out)


def student_config(args: argparse.Namespace, pseudo: Path, image_dir: Path) -> Any:
    """tiny.yaml trained on the pseudo-labels alone."""
    from glip.config import load_config

    return load_config(
        REPO / "configs" / "synthetic" / "tiny.yaml",
        [
            "data.format=mdetr", "data.pseudo_labelled=true", f"data.train_json={pseudo}",
            f"data.train_images={image_dir}", f"solver.max_iter={args.steps}",
            f"solver.warmup_iters={max(args.steps // 10, 1)}", f"solver.checkpoint_period={max(args.steps // 4, 1)}",
            f"solver.ims_per_batch={args.batch}", f"solver.seed={args.seed}", *args.overrides,
        ],
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns the report (also written to ``WORK/report.json``)."""
    from glip.api import Predictor
    from glip.data import generate_synthetic
    from glip.engine import train
    from glip.hub.checkpoint import load_model

    work = Path(args.work)
    start = time.time()
    # Deterministic for a seed: a resumed run regenerates the same files (same captions digest).
    ds = generate_synthetic(
        work / "data", num_train=args.num_train, num_val=args.num_val, image_size=tuple(args.image_size),
        seed=args.seed, max_objects=args.max_objects,
    )  # fmt: skip
    captions = work / "data" / "captions_train.json"
    teacher = Predictor(args.teacher, device=args.device)
    summary = pseudo_label(args, captions, ds.image_dir, work / "pseudo.json", teacher)
    print(f"pseudo-labels: {summary.captions} captions with {summary.boxes} boxes "
          f"({summary.dropped_captions} captions without a box above {args.threshold})")  # fmt: skip
    if summary.captions < args.batch:
        raise SystemExit(f"only {summary.captions} captions have a box above --threshold {args.threshold}: lower it")

    cfg = student_config(args, work / "pseudo.json", ds.image_dir)
    result = train(
        cfg, work / "student", resume=True, cpu=args.device == "cpu", progress_bar=not args.quiet,
        weights=args.student_init,
    )  # fmt: skip
    if result.interrupted_by is not None:
        raise SystemExit(f"interrupted at step {result.progress.step}; run again to resume")

    evaluate = _train_demo().evaluate
    held = set(ds.held_out)
    models = {"teacher": teacher.model}
    for which in ("model", "model_ema"):
        if (work / "student" / which).is_dir():
            models[f"student {which}"] = load_model(work / "student" / which, device=args.device)
    report: dict[str, Any] = {
        "teacher_model": str(args.teacher), "threshold": args.threshold, "steps": result.progress.step,
        "pseudo_captions": summary.captions, "pseudo_boxes": summary.boxes, "val_images": args.num_val,
    }  # fmt: skip
    for name, model in models.items():
        report[name] = evaluate(model, ds.val_json, ds.image_dir, held)["all"]
    teacher_row = report["teacher"]
    print(f"\nbox AP on {args.num_val} validation images, every category prompted:")
    print(f"  {'':<28} {'AP':>6} {'AP50':>6}")
    for name in models:
        print(f"  {name:<28} {report[name]['AP']:6.1f} {report[name]['AP50']:6.1f}")
    for name in models:
        if name != "teacher":
            gap = {k: teacher_row[k] - report[name][k] for k in ("AP", "AP50")}
            report[f"gap {name}"] = gap
            print(f"  {'gap: teacher - ' + name:<28} {gap['AP']:6.1f} {gap['AP50']:6.1f}")
    report["minutes"] = (time.time() - start) / 60
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\n{report['minutes']:.1f} min; report in {work / 'report.json'}")
    return report


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
