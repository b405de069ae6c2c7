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

With ``--shards N`` stages 2-5 run on shards, at constant memory whatever the set's size:
the training captions are written as img2dataset writes them (``WORK/data/caption_shards``:
tars of N ``{key}.png`` + ``{key}.txt`` + ``{key}.json``), labelled by ``glip pseudo-label
--shards``'s Python API into ``WORK/pseudo_shards``, screened shard by shard with the same
per-caption rule into ``WORK/student_shards``
(:func:`glip.tools.pseudo_label_refine.refine_shards`: one output shard per input shard,
atomic, resumable), the quality table streams the shards, and the student trains on
``data.train_shards`` (packing draws each caption's negatives from its own shard). With one
shard (N >= the captions) every output equals the json path's.

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
    p.add_argument("--shards", type=int, default=0, metavar="N",
                   help="run stages 2-5 on img2dataset-layout caption shards of N images (written from the "
                        "synthetic set) instead of the captions json: glip pseudo-label --shards, the screen "
                        "shard by shard, the student on data.train_shards (0: the json path)")  # fmt: skip
    p.add_argument("--caption-shards", default=None, metavar="DIR",
                   help="as --shards, reading these img2dataset shards of the synthetic training images instead "
                        "(keys: the image files' stems, which the quality table matches to the gold boxes)")  # fmt: skip
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


def _teacher(args: argparse.Namespace, teacher_model: Any, captions: Iterable[str]) -> tuple[Any, dict[str, Any]]:
    """The labelling teacher and how it is named (the settings' ``model``); ``captions``: the
    captions whose frequent phrases are the CLIP teacher's background concepts."""
    from glip.tools.teachers import GlipTeacher, build_chunker

    model: dict[str, Any] = {"model": str(args.teacher), "config": None}
    if not args.clip_model:
        return GlipTeacher(teacher_model, args.threshold), model
    # The GLIP teacher proposes regions, CLIP names them.
    from glip.tools.clip_teacher import ClipScorer, ClipTeacher, GlipProposals, frequent_phrases

    scorer = ClipScorer.load(args.clip_model, args.clip_pretrained, args.device)
    proposals = GlipProposals(GlipTeacher(teacher_model, args.proposal_threshold), 0.5)
    background = frequent_phrases(captions, build_chunker("offline"), args.clip_background)
    model.update(clip_model=str(args.clip_model), proposal_threshold=args.proposal_threshold,
                 clip_background=args.clip_background)  # fmt: skip
    return ClipTeacher(scorer, proposals, args.threshold, background), model


def _settings(args: argparse.Namespace, digest: str, count: int, model: dict[str, Any]) -> Any:
    from glip.tools.pseudo_label import PseudoLabelSettings

    kind = "clip" if args.clip_model else "glip"
    return PseudoLabelSettings(digest, count, args.threshold, -1.0, args.min_boxes, kind, "offline", model)


def pseudo_label(args: argparse.Namespace, captions: Path, image_dir: Path, out: Path, teacher_model: Any) -> Any:
    """Labels the captions with the teacher (resumable) and merges ``out``; returns the summary."""
    from glip.tools.pseudo_label import ShardStore, file_digest, label_images, merge_shards, read_caption_items
    from glip.tools.teachers import build_chunker

    items = read_caption_items(captions)
    store = ShardStore(out.with_name(out.name + ".shards"))
    teacher, model = _teacher(args, teacher_model, (c for it in items for c in it.captions))
    settings = _settings(args, file_digest(captions), len(items), model)
    label_images(items, image_dir, teacher, build_chunker("offline"), store, settings, progress=not args.quiet)
    return merge_shards(items, store, out)


def write_caption_shards(captions: Path, image_dir: Path, out: Path, per_shard: int) -> list[Path]:
    """The captioned images as img2dataset writes them (``--output_format webdataset
    --encode_format png``): ``out/00000.tar``, ... of ``per_shard`` samples ``{key}.png`` (the
    file's bytes), ``{key}.txt`` (its first caption; the synthetic sets have one) and
    ``{key}.json`` (download metadata), the key being the file's stem. Deterministic bytes,
    so a rerun finds the same shards (the labelling resumes)."""
    from glip.data.shards import ShardWriter
    from glip.tools.pseudo_label import read_caption_items

    items, paths = read_caption_items(captions), []
    for start in range(0, len(items), per_shard):
        paths.append(out / f"{start // per_shard:05d}.tar")
        with ShardWriter(paths[-1]) as writer:
            for it in items[start : start + per_shard]:
                key = Path(it.file_name).stem
                meta = {"url": it.file_name, "key": key, "status": "success", "caption": it.captions[0]}
                writer.write(key, {"png": (image_dir / it.file_name).read_bytes(), "txt": it.captions[0], "json": meta})
    return paths


def pseudo_label_shards(args: argparse.Namespace, inputs: list[Path], out: Path, teacher_model: Any) -> dict[str, int]:
    """Labels caption shards ``inputs`` into ``out`` (``glip pseudo-label --shards``'s Python
    API: one output shard per input shard, resumable); returns the captions, boxes and
    dropped captions over all shards."""
    from glip.tools.pseudo_label import ShardStore
    from glip.tools.pseudo_label_shards import (
        input_digest,
        label_shards,
        output_totals,
        shard_captions,
        write_output_manifest,
    )
    from glip.tools.teachers import build_chunker

    teacher, model = _teacher(args, teacher_model, (c for p in inputs for c in shard_captions(p)))
    settings = _settings(args, input_digest(inputs), len(inputs), model)
    run = label_shards(inputs, out, teacher, build_chunker("offline"), ShardStore(out), settings,
                       progress=not args.quiet)  # fmt: skip
    if run.unreadable or write_output_manifest(inputs, out) is None:
        raise SystemExit(f"{out}: some caption shard could not be labelled: {'; '.join(run.unreadable)}")
    totals = output_totals(inputs, out)
    return {"captions": totals["samples"], "boxes": totals["boxes"], "dropped": totals["dropped"]}


def refine(pseudo: Path, out: Path, conf: float, nms: float, per_phrase: int, complete: bool) -> dict[str, int]:
    """Writes the student's data: ``pseudo`` (the teacher's MDETR json, :func:`pseudo_label`)
    screened per caption by :class:`glip.tools.pseudo_label_refine.Refiner` (boxes scoring
    above ``conf``, class-agnostic NMS at IoU ``nms``, at most ``per_phrase`` boxes per
    phrase, 0: all; with ``complete``, only the captions whose every noun phrase of the
    offline chunker kept a box). Reads the teacher's output only. Returns ``{"captions":
    ..., "boxes": ...}`` kept."""
    from glip.tools.pseudo_label_refine import refine_json

    return refine_json(pseudo, out, _refiner(conf, nms, per_phrase, complete))


def _refiner(conf: float, nms: float, per_phrase: int, complete: bool) -> Any:
    from glip.tools.pseudo_label_refine import RefineOptions, Refiner
    from glip.tools.teachers import build_chunker

    return Refiner(RefineOptions(conf, nms, per_phrase, complete), build_chunker("offline"))


def pseudo_label_quality(pseudo: Path | Iterable[Any], gold: Path, iou: float = 0.5) -> dict[str, Any]:
    """:func:`glip.tools.pseudo_label_refine.pseudo_label_quality`: ``pseudo``'s boxes against
    the gold training boxes (``train.json``, read for this table only, never by the student)."""
    from glip.tools.pseudo_label_refine import pseudo_label_quality as quality

    return quality(pseudo, gold, iou)


def print_quality(rows: dict[str, dict[str, Any]]) -> None:
    """:func:`glip.tools.pseudo_label_refine.print_quality`."""
    from glip.tools.pseudo_label_refine import print_quality as show

    show(rows)


# The student's prompts: each caption packed with 3 other captions that ground none of its
# phrases, as negatives. Unpacked, the student never sees a name absent from its image: it
# scored 30.7 AP50 with every category prompted against 69.1 with only the image's own
# categories; packed, 41.2 with every category (README, "Self-training, end to end").
STUDENT_DATA = ["data.pack_captions=3", "data.pack_disjoint=true"]


def student_config(args: argparse.Namespace, pseudo: Path, image_dir: Path | None) -> Any:
    """tiny.yaml trained on the pseudo-labels alone: the json ``pseudo`` with ``image_dir``,
    or the shard set ``pseudo`` (``image_dir`` None)."""
    from glip.config import load_config

    data = [f"data.train_json={pseudo}", f"data.train_images={image_dir}"] if image_dir else [
        f"data.train_shards={pseudo}"
    ]  # fmt: skip
    return load_config(
        REPO / "configs" / "synthetic" / "tiny.yaml",
        [
            "data.format=mdetr", "data.pseudo_labelled=true", *data, f"solver.max_iter={args.steps}",
            f"solver.warmup_iters={max(args.steps // 10, 1)}", f"solver.checkpoint_period={max(args.steps // 4, 1)}",
            f"solver.ims_per_batch={args.batch}", f"solver.seed={args.seed}", *STUDENT_DATA, *args.overrides,
        ],
    )  # fmt: skip


def student_data(args: argparse.Namespace, ds: Any, teacher: Any) -> dict[str, Any]:
    """Stages 2-4: the teacher's pseudo-labels, the student's data and the quality table, on
    the captions json (``WORK/pseudo.json``, ``WORK/student.json``) or, with ``--shards N``,
    on img2dataset-layout shards of N captions (``WORK/data/caption_shards`` ->
    ``WORK/pseudo_shards`` -> ``WORK/student_shards``, shard by shard). Returns the counts,
    the quality rows and ``data`` / ``images``, what :func:`student_config` takes."""
    from glip.tools.pseudo_label_refine import json_records, refine_records, refine_shards, shard_records
    from glip.tools.pseudo_label_shards import input_shards

    work, captions = Path(args.work), Path(args.work) / "data" / "captions_train.json"
    conf, screen = max(args.conf, args.threshold), (args.nms, args.per_phrase, args.complete)
    if args.shards or args.caption_shards:
        if args.caption_shards:
            inputs = input_shards(args.caption_shards)
        else:
            inputs = write_caption_shards(captions, ds.image_dir, work / "data" / "caption_shards", args.shards)
        labelled = pseudo_label_shards(args, inputs, work / "pseudo_shards", teacher)
        pseudo_shards = input_shards(work / "pseudo_shards")
        kept = refine_shards(pseudo_shards, work / "student_shards", _refiner(conf, *screen))
        data, images = work / "student_shards", None

        def pseudo() -> Any:
            return shard_records(pseudo_shards)

        student = shard_records(input_shards(data))
    else:
        merged = pseudo_label(args, captions, ds.image_dir, work / "pseudo.json", teacher)
        labelled = {"captions": merged.captions, "boxes": merged.boxes, "dropped": merged.dropped_captions}
        kept = refine(work / "pseudo.json", work / "student.json", conf, *screen)
        data, images = work / "student.json", ds.image_dir

        def pseudo() -> Any:
            return json_records(work / "pseudo.json")

        student = json_records(data)
    print(f"pseudo-labels: {labelled['captions']} captions with {labelled['boxes']} boxes "
          f"({labelled['dropped']} captions without a box above {args.threshold})")  # fmt: skip
    print(f"student data: {kept['captions']} captions with {kept['boxes']} boxes (scores > {conf}, NMS {args.nms}, "
          f"--per-phrase {args.per_phrase}{', complete captions only' if args.complete else ''})")  # fmt: skip
    if kept["captions"] < args.batch:
        raise SystemExit(f"only {kept['captions']} captions kept with --conf {conf}: lower it")
    # Reporting only: the gold training boxes never reach the student. The other rows: the
    # student's data had --conf been another value (screened as the records stream by).
    quality = {f"teacher (> {args.threshold:g})": pseudo_label_quality(pseudo(), ds.train_json)}
    for c in sorted({round(args.threshold + 0.05 * k, 2) for k in range(9)} - {conf}):
        if c < 1.0:
            sweep = refine_records(pseudo(), _refiner(c, *screen))
            quality[f"screened > {c:g}"] = pseudo_label_quality(sweep, ds.train_json)
    quality[f"student data (> {conf:g})"] = pseudo_label_quality(student, ds.train_json)
    print_quality(quality)
    return {"pseudo": labelled, "student": kept, "quality": quality, "conf": conf, "data": data, "images": images}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns the report (also written to ``WORK/report.json``)."""
    from glip.api import Predictor
    from glip.engine import train
    from glip.hub.loading import load_model

    work = Path(args.work)
    start = time.time()
    ds = synthetic_set(args, work / "data")
    teacher = Predictor(args.teacher, device=args.device)
    made = student_data(args, ds, teacher)
    summary, kept, quality, conf = made["pseudo"], made["student"], made["quality"], made["conf"]

    cfg = student_config(args, made["data"], made["images"])
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
        "pseudo_captions": summary["captions"], "pseudo_boxes": summary["boxes"], "student_captions": kept["captions"],
        "student_boxes": kept["boxes"], "pseudo_quality": quality, "val_images": args.num_val,
        "shards": args.caption_shards or args.shards,
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
