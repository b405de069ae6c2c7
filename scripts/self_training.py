"""GLIP's self-training on synthetic shapes: a teacher grounds captions, a student learns
from those pseudo-labels alone, and both are evaluated on the same validation images.

    python scripts/self_training.py --work runs/self-training                 # demo-shapes as teacher
    python scripts/self_training.py --teacher runs/demo/train/model --threshold 0.5 --steps 1200

1. ``generate_synthetic`` writes a fresh synthetic set (another seed than the demo's
   training set): images, ``val.json`` (boxes) and ``captions_train.json`` (one sentence
   per training image naming its two or three largest shapes and a spatial relation).
2. The teacher (a zoo name or a model folder) pseudo-labels the training captions through
   ``glip pseudo-label``'s Python API (:mod:`glip.tools.pseudo_label`: the offline noun
   phrase chunker, every box scoring above ``--threshold``) into ``WORK/pseudo.json``.
   With ``--clip-model`` the CLIP teacher labels instead (RegionCLIP-style, ``glip
   pseudo-label --teacher clip``): the GLIP teacher's boxes above ``--proposal-threshold``
   are the regions, CLIP names each with a caption phrase (scores: CLIP's probabilities)
   and writes the concept scores that the distillation loss reads
   (``model.heads.grounding.distill_weight=1``).
3. :func:`refine` screens them into the student's data, ``WORK/student.json``: boxes
   above ``--conf``, class-agnostic NMS at ``--nms``, the best ``--per-phrase`` boxes of
   each phrase, and (unless ``--keep-incomplete``) only captions whose every phrase kept a
   box: an unlabelled phrase's tokens would be negatives on its own shape.
4. :func:`pseudo_label_quality` reports precision / recall of those boxes against the
   gold training boxes (``train.json``, read for this table only) for a sweep of ``--conf``.
5. A student (``configs/synthetic/tiny.yaml``; ``--student-init``: weights to start from)
   trains ONLY on ``student.json`` (``data.format=mdetr``, ``data.pseudo_labelled=true``,
   each caption packed with 3 others as negatives: :data:`STUDENT_DATA`) with
   :func:`glip.engine.train`.
6. Teacher and student (its final weights and its EMA) are evaluated as
   ``scripts/train_demo.py`` evaluates the demo: COCO box AP / AP50 (pycocotools) on the
   validation images, every category prompted. The script prints the table and the gap
   (teacher minus student) and writes ``WORK/report.json``.

Every stage resumes: the labelling skips the images its shards hold, the training continues
from its last checkpoint (``WORK/student/checkpoints``); run the same command again after
an interruption. The bundled demo teacher scores its best boxes around 0.3-0.6 and repeats
a box under several phrases, hence the low ``--threshold 0.15`` and the screen's defaults
(``--conf 0.3 --nms 0.5 --per-phrase 1``: ~96 % of the kept boxes right, ~93 % of the named
shapes labelled; the official caption threshold, 0.5, suits GLIP-T / GLIP-L).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def _train_demo() -> Any:
    """scripts/train_demo.py as a module (its ``evaluate``)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import train_demo

    return train_demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/self-training", help="data, pseudo-labels, student run, report")
    p.add_argument("--teacher", default="demo-shapes", help="teacher: a zoo name or a model folder (demo-shapes)")
    p.add_argument("--num-train", type=int, default=2000, help="captioned training images (2000, as the demo)")
    p.add_argument("--num-val", type=int, default=80, help="validation images (80)")
    p.add_argument("--image-size", type=int, nargs=2, default=(128, 192), metavar=("MIN", "MAX"),
                   help="image sides drawn in [MIN, MAX] (128 192, as the demo)")  # fmt: skip
    p.add_argument("--max-objects", type=int, default=5, help="shapes per image, at most (5)")
    p.add_argument("--seed", type=int, default=1, help="data and training seed (1; the demo trained on seed 0)")
    p.add_argument("--threshold", type=float, default=0.15,
                   help="the teacher's boxes scoring above this are stored in WORK/pseudo.json (0.15)")  # fmt: skip
    p.add_argument("--conf", type=float, default=0.3,
                   help="the student's data: boxes scoring above this (0.3; at least --threshold)")  # fmt: skip
    p.add_argument("--nms", type=float, default=0.5,
                   help="the student's data: class-agnostic NMS IoU over a caption's boxes (0.5; -1: none)")  # fmt: skip
    p.add_argument("--per-phrase", type=int, default=1,
                   help="the student's data: at most this many boxes per phrase, the best scoring (1; 0: all)")  # fmt: skip
    p.add_argument("--keep-incomplete", dest="complete", action="store_false",
                   help="the student's data keeps captions with a phrase left without a box (default: dropped)")  # fmt: skip
    p.add_argument("--min-boxes", type=int, default=1, help="captions with fewer boxes are left out (1)")
    p.add_argument("--clip-model", default=None,
                   help="label with the CLIP teacher instead (glip pseudo-label --teacher clip): the GLIP teacher "
                        "proposes regions, this CLIP (e.g. scripts/train_shapes_clip.py's WORK/clip) names them")  # fmt: skip
    p.add_argument("--clip-pretrained", default=None, help="open_clip weights, as glip pseudo-label's")
    p.add_argument("--proposal-threshold", type=float, default=0.1, help="CLIP teacher: GLIP regions above this")
    p.add_argument("--clip-background", type=int, default=50,
                   help="CLIP teacher: background concepts, the most frequent phrases of the captions (50)")  # fmt: skip
    p.add_argument("--steps", type=int, default=1200, help="student training steps (1200, as the demo)")
    p.add_argument("--batch", type=int, default=8, help="student images per step (8)")
    p.add_argument("--device", default="cpu", help="where the teacher labels and the models are evaluated (cpu)")
    p.add_argument("--student-init", default=None, metavar="FOLDER",
                   help="weights the student starts from (e.g. scripts/train_demo.py's visual pre-training, "
                        "WORK/init; with its DEMO_RECIPE as overrides); default: fresh")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="student config overrides (tiny.yaml)")
    return p.parse_args(argv)


def synthetic_set(args: argparse.Namespace, root: Path) -> Any:
    """:func:`glip.data.generate_synthetic` into ``root`` once: ``root/self_training.json``
    records the settings after a complete generation, and a rerun with the same settings
    reads the files again instead of drawing them anew (the draw is deterministic)."""
    from glip.data import generate_synthetic
    from glip.data.synthetic import SyntheticDataset

    settings = {
        "num_train": args.num_train, "num_val": args.num_val, "image_size": list(args.image_size),
        "seed": args.seed, "max_objects": args.max_objects,
    }  # fmt: skip
    marker = root / "self_training.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        names = tuple(c["name"] for c in json.loads((root / "val.json").read_text())["categories"])
        return SyntheticDataset(root, root / "train.json", root / "val.json", root / "images", names, ())
    marker.unlink(missing_ok=True)
    ds = generate_synthetic(root, **{**settings, "image_size": tuple(args.image_size)})
    marker.write_text(json.dumps(settings))
    return ds


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
    model: dict[str, Any] = {"model": str(args.teacher), "config": None}
    teacher: Any = GlipTeacher(teacher_model, args.threshold)
    chunker = build_chunker("offline")
    if args.clip_model:  # the GLIP teacher proposes regions, CLIP names them
        from glip.tools.clip_teacher import ClipScorer, ClipTeacher, GlipProposals, frequent_phrases

        scorer = ClipScorer.load(args.clip_model, args.clip_pretrained, args.device)
        proposals = GlipProposals(GlipTeacher(teacher_model, args.proposal_threshold), 0.5)
        background = frequent_phrases((c for it in items for c in it.captions), chunker, args.clip_background)
        teacher = ClipTeacher(scorer, proposals, args.threshold, background)
        model.update(clip_model=str(args.clip_model), proposal_threshold=args.proposal_threshold,
                     clip_background=args.clip_background)  # fmt: skip
    kind = "clip" if args.clip_model else "glip"
    settings = PseudoLabelSettings(
        file_digest(captions), len(items), args.threshold, -1.0, args.min_boxes, kind, "offline", model
    )
    label_images(items, image_dir, teacher, chunker, store, settings, progress=not args.quiet)
    return merge_shards(items, store, out)


def refine(pseudo: Path, out: Path, conf: float, nms: float, per_phrase: int, complete: bool) -> dict[str, int]:
    """Writes the student's data: ``pseudo`` (the teacher's MDETR json, :func:`pseudo_label`)
    screened per caption as the official ``CAPTION_CONF`` / ``CAPTION_NMS`` screen
    (:class:`glip.data.caption_screen.CaptionScreen`: boxes scoring above ``conf``, class-agnostic NMS at
    IoU ``nms``), then at most ``per_phrase`` boxes per phrase (the best scoring; 0: all)
    and, with ``complete``, only the captions whose every noun phrase (the offline
    chunker's, as the teacher saw them) kept a box: a phrase left without a box still sits
    in the student's prompt, where its tokens are negatives for every anchor, its own
    shape's too. Captions left without a box are dropped. Reads the teacher's output only.
    Returns ``{"captions": ..., "boxes": ...}`` kept."""
    from glip.data.caption_screen import CaptionScreen
    from glip.tools.teachers import build_chunker

    data = json.loads(pseudo.read_text())
    screen, chunker = CaptionScreen(conf, nms, 0), build_chunker("offline")
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images, annotations = [], []
    for im in data["images"]:
        kept: dict[str, list[dict[str, Any]]] = {}
        for a in sorted(screen.screen(by_image.get(im["id"], [])), key=lambda a: -a["score"]):
            phrase = kept.setdefault(json.dumps(a["tokens_positive"]), [])
            if per_phrase <= 0 or len(phrase) < per_phrase:
                phrase.append(a)
        phrases = {json.dumps([list(span)]) for _, span in chunker(im["caption"])}
        if not kept or (complete and not phrases <= set(kept)):
            continue
        images.append(im)
        annotations += [a for boxes in kept.values() for a in boxes]
    data["images"], data["annotations"] = images, annotations
    out.write_text(json.dumps(data))
    return {"captions": len(images), "boxes": len(annotations)}


def _iou(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    """IoU of COCO ``[x, y, w, h]`` boxes ``a`` (N) and ``b`` (M): ``[N, M]``
    (:func:`glip.ops.boxes.box_iou`, continuous coordinates)."""
    import torch

    from glip.ops.boxes import box_iou

    def corners(boxes: list[list[float]]) -> torch.Tensor:  # [K, 4] xywh -> xyxy
        t = torch.tensor(boxes, dtype=torch.float64)
        return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)

    return box_iou(corners(a), corners(b)).numpy()


def pseudo_label_quality(pseudo: Path, gold: Path, iou: float = 0.5) -> dict[str, Any]:
    """How good the boxes of ``pseudo`` (an MDETR json) are, for the report only: the gold
    training boxes (``gold``, the synthetic set's ``train.json``) are read here and never
    by the student.

    Per image, the boxes are matched one-to-one to gold boxes of the category their phrase
    names (``"a red circle"`` -> ``red circle``), best score first, at IoU >= ``iou``.
    Returns ``boxes``, ``captions`` (with a box), ``precision`` (matched / boxes),
    ``recall`` (matched / the gold boxes of these images), ``recall_named`` (matched / the
    gold boxes whose category the caption names: the captions name at most the three largest
    shapes) and ``duplicates`` (unmatched boxes on an already matched gold box of their
    category); precision and recalls in percent.
    """
    p, g = json.loads(pseudo.read_text()), json.loads(gold.read_text())
    names = {c["id"]: c["name"] for c in g["categories"]}
    gold_ids = {im["file_name"]: im["id"] for im in g["images"]}
    gold_boxes: dict[Any, list[tuple[str, list[float]]]] = {}
    for a in g["annotations"]:
        gold_boxes.setdefault(a["image_id"], []).append((names[a["category_id"]], a["bbox"]))
    pseudo_boxes: dict[Any, list[dict[str, Any]]] = {}
    for a in p["annotations"]:
        pseudo_boxes.setdefault(a["image_id"], []).append(a)
    boxes = matched = named = duplicates = captions = total = 0
    for im in p["images"]:
        truth = gold_boxes.get(gold_ids[im["file_name"]], [])
        named, total = named + sum(name in im["caption"] for name, _ in truth), total + len(truth)
        kept = sorted(pseudo_boxes.get(im["id"], []), key=lambda a: -a["score"])
        boxes, captions = boxes + len(kept), captions + bool(kept)
        if not kept or not truth:
            continue
        overlap = _iou([a["bbox"] for a in kept], [b for _, b in truth])  # [K, G]
        taken = np.zeros(len(truth), dtype=bool)
        for k, a in enumerate(kept):
            same = np.array([name in a["phrase"] for name, _ in truth]) & (overlap[k] >= iou)  # [G]
            free = np.flatnonzero(same & ~taken)
            if len(free):
                taken[free[np.argmax(overlap[k, free])]] = True
                matched += 1
            elif same.any():
                duplicates += 1
    return {
        "boxes": boxes, "captions": captions, "duplicates": duplicates, "precision": 100.0 * matched / max(boxes, 1),
        "recall": 100.0 * matched / max(total, 1), "recall_named": 100.0 * matched / max(named, 1),
    }  # fmt: skip


def print_quality(rows: dict[str, dict[str, Any]]) -> None:
    """The table of :func:`pseudo_label_quality` rows, by name."""
    print("pseudo-label quality vs the gold training boxes (IoU >= 0.5, the phrase's category; report only):")
    print(f"  {'':<26} {'boxes':>6} {'captions':>8} {'precision':>9} {'recall':>6} {'named':>6} {'dup':>4}")
    for name, r in rows.items():
        print(f"  {name:<26} {r['boxes']:6d} {r['captions']:8d} {r['precision']:9.1f} {r['recall']:6.1f} "
              f"{r['recall_named']:6.1f} {r['duplicates']:4d}")  # fmt: skip


# The student's prompts: each caption packed with 3 other captions that ground none of its
# phrases, as negatives. Unpacked, the student never sees a name absent from its image: it
# scored 30.7 AP50 with every category prompted against 69.1 with only the image's own
# categories; packed, 41.2 with every category (README, "Self-training, end to end").
STUDENT_DATA = ["data.pack_captions=3", "data.pack_disjoint=true"]


def student_config(args: argparse.Namespace, pseudo: Path, image_dir: Path) -> Any:
    """tiny.yaml trained on the pseudo-labels alone."""
    from glip.config import load_config

    return load_config(
        REPO / "configs" / "synthetic" / "tiny.yaml",
        [
            "data.format=mdetr", "data.pseudo_labelled=true", f"data.train_json={pseudo}",
            f"data.train_images={image_dir}", f"solver.max_iter={args.steps}",
            f"solver.warmup_iters={max(args.steps // 10, 1)}", f"solver.checkpoint_period={max(args.steps // 4, 1)}",
            f"solver.ims_per_batch={args.batch}", f"solver.seed={args.seed}", *STUDENT_DATA, *args.overrides,
        ],
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns the report (also written to ``WORK/report.json``)."""
    from glip.api import Predictor
    from glip.engine import train
    from glip.hub.loading import load_model

    work = Path(args.work)
    start = time.time()
    ds = synthetic_set(args, work / "data")
    captions = work / "data" / "captions_train.json"
    teacher = Predictor(args.teacher, device=args.device)
    summary = pseudo_label(args, captions, ds.image_dir, work / "pseudo.json", teacher)
    print(f"pseudo-labels: {summary.captions} captions with {summary.boxes} boxes "
          f"({summary.dropped_captions} captions without a box above {args.threshold})")  # fmt: skip
    conf = max(args.conf, args.threshold)
    screen = (args.nms, args.per_phrase, args.complete)
    kept = refine(work / "pseudo.json", work / "student.json", conf, *screen)
    print(f"student data: {kept['captions']} captions with {kept['boxes']} boxes (scores > {conf}, NMS {args.nms}, "
          f"--per-phrase {args.per_phrase}{', complete captions only' if args.complete else ''})")  # fmt: skip
    if kept["captions"] < args.batch:
        raise SystemExit(f"only {kept['captions']} captions kept with --conf {conf}: lower it")
    # Reporting only: the gold training boxes never reach the student. The other rows: the
    # student's data had --conf been another value.
    quality = {f"teacher (> {args.threshold:g})": pseudo_label_quality(work / "pseudo.json", ds.train_json)}
    for c in sorted({round(args.threshold + 0.05 * k, 2) for k in range(9)} - {conf}):
        if c < 1.0:
            refine(work / "pseudo.json", work / "sweep.json", c, *screen)
            quality[f"screened > {c:g}"] = pseudo_label_quality(work / "sweep.json", ds.train_json)
    (work / "sweep.json").unlink(missing_ok=True)
    quality[f"student data (> {conf:g})"] = pseudo_label_quality(work / "student.json", ds.train_json)
    print_quality(quality)

    cfg = student_config(args, work / "student.json", ds.image_dir)
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
        "teacher_model": str(args.teacher), "clip_model": args.clip_model, "threshold": args.threshold, "conf": conf, "steps": result.progress.step,
        "nms": args.nms, "per_phrase": args.per_phrase, "complete": args.complete, "num_train": args.num_train,
        "pseudo_captions": summary.captions, "pseudo_boxes": summary.boxes, "student_captions": kept["captions"],
        "student_boxes": kept["boxes"], "pseudo_quality": quality, "val_images": args.num_val,
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
