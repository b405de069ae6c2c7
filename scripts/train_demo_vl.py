"""Turn the demo detector into the GLIPv2 demo: one set of weights that detects, segments,
answers questions and writes captions about the synthetic shapes, on the CPU.

    python scripts/train_demo_vl.py --work runs/demo-vl                 # from the bundled demo-shapes
    python scripts/train_demo_vl.py --work runs/demo-vl --from runs/demo/model --out runs/demo-vl/zoo
    python scripts/train_demo_vl.py --work runs/demo-vl --continue-heads --steps 400 --out runs/demo-cont  # continue the shipped heads

1. The demo's synthetic set again (``scripts/train_demo.py``'s data: same seed, sizes and
   held-out categories): images, boxes and masks, and the questions (``vqa_train.json``)
   and captions (``captions_train.json``) ``glip data synthetic`` writes about them.
2. One multi-task run of :func:`glip.engine.train` from the detector (``--from``): each
   step draws one source, detection with masks, VQA or captioning, by ``--source-weights``
   (1, 2, 1: :mod:`glip.engine.multitask`). The backbone, FPN, fusion and DyConv tower stay frozen
   (:data:`VL_RECIPE`), so the detector's maps are the ones it was evaluated on; the
   grounding and mask heads keep training on the detection batches (and the grounding head
   learns to point the answer slot at the answer's boxes on the VQA batches); the answer
   and captioning heads start fresh, each with a visual read-out
   (:mod:`glip.modeling.heads.readout`, ``--readout-dim``).
3. Before (the detector) and after: box and mask AP on the demo's validation images (as
   ``train_demo.py`` evaluates), and VQA accuracy (the official formula, per question
   type) and caption metrics (pycocoevalcap: BLEU-4, METEOR, ROUGE-L, CIDEr) on a fresh
   synthetic set (another seed, never trained on).
4. ``save_model`` in fp16 to ``--out`` (default: the bundled folder), the training switches
   reset to tiny.yaml's and the caption decoder cut to the training captions' words
   (:func:`glip.modeling.heads.caption.restrict_vocabulary`: the same logits for those, 23
   MB fewer); the saved folder is evaluated again as shipped.

Why the read-outs: from this detector, with the fusion trained too and no read-out, the
answer head stayed at chance on colour (0.28) and shape (0.21) questions and the captioning
head wrote "a yellow square" for every image (800 steps): two 32-channel fusion blocks do
not carry an object's attributes into the answer slot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]

# The multi-task stage: everything that makes the detector's maps frozen.
VL_RECIPE = [
    "model.backbone.freeze=true",
    "model.backbone.freeze_fpn=true",
    "solver.fusion_lr_factor=0.0",
    "solver.tower_lr_factor=0.0",
    "solver.max_neg_per_batch=1.0",  # questions answered "no" / "0" have no box
    "train.find_unused_parameters=true",
    "train.eval_period=0",
    "data.disjoint_negatives=true",
    "solver.steps=[0.8]",
]


# The continued stage (``--continue-heads``, issue #25): the shipped model's detection
# prompts draw their negatives among all the other names, those sharing a colour or shape
# word with the image's shapes included ("blue circle" on a blue diamond), which
# ``data.disjoint_negatives`` never shows. Trained with disjoint negatives only, the
# grounding head scores each word on its own: at a blue diamond the "blue" of "blue circle"
# gets 0.36 against 0.41 for the "blue" of "blue diamond" (40 fresh images), so the mean
# over a phrase's tokens puts a half-right phrase at about half the right one's score.
HARD_NEGATIVES = ["data.disjoint_negatives=false"]

# The binding stage (``--bind-steps``, issue #25): detection alone, with the negatives above
# and the fusion's text path (the X-attention blocks and the in-head BERT layers) trained at
# ``--bind-fusion-lr-factor`` of the base rate, the backbone, FPN and tower frozen. Its
# in-head BERT layers are the only place where a word's feature can take in the other words
# of its phrase (the MiniLM encoder is frozen and referenced, not shipped): they learn to
# tell the "blue" of "blue circle" from the "blue" of "blue diamond", which frozen text and
# word-sharing negatives alone cannot (the continued stage above).
BIND_RECIPE = [
    "model.backbone.freeze=true",
    "model.backbone.freeze_fpn=true",
    "solver.tower_lr_factor=0.0",
    "train.find_unused_parameters=true",
    "train.eval_period=0",
    *HARD_NEGATIVES,
    "solver.steps=[0.8]",
]


# The bias0 shifts the calibration tries (logits; +1 takes a token probability of 0.4 to 0.64):
# -3 to 1.5 by quarters, and 2. The floor was -1 until the recipe from scratch
# (scripts/make_demo.py) made a model whose teacher still kept 0.99 of the captions there.
CALIBRATION_SHIFTS = [x / 4 for x in range(-12, 7)] + [2.0]


def _train_demo() -> Any:
    """scripts/train_demo.py as a module (its data settings, ``evaluate`` and ``save_demo``)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import train_demo

    return train_demo


def choose_shift(rows: list[dict[str, float]], precision: float, keep: float) -> float:
    """The calibration's rule over its measured rows (``shift``, ``detections``, ``right`` and,
    when measured, ``keep``): with ``keep`` > 0, the lowest shift whose teacher still keeps at
    least ``keep`` of the calibration captions (the most precise threshold the teacher
    allows; the highest shift measured when none does); else the largest shift at which at
    least ``precision`` of the detections above 0.5 are right (the most precise shift when
    none is)."""
    if keep > 0:
        enough = [r["shift"] for r in rows if r.get("keep", -1.0) >= keep]
        return min(enough) if enough else max(r["shift"] for r in rows)
    precise = [r["shift"] for r in rows if r["detections"] and r["right"] / r["detections"] >= precision]
    if precise:
        return max(precise)
    return max(rows, key=lambda r: r["right"] / max(r["detections"], 1))["shift"]


def calibrate_bias(
    model, calib, precision: float, shifts: list[float], keep: float = 0.0, work: Path | None = None
) -> tuple[float, list[dict[str, float]]]:
    """Calibrate the grounding scores to the 0.5 threshold by a shift of the grounding head's
    ``bias0`` (every region-token logit moves by it), chosen by :func:`choose_shift` on the
    calibration set ``calib`` (fresh images of a fixed seed of their own, never an evaluation
    seed): the precision of the detections above 0.5 with all 16 names prompted, and with
    ``keep`` > 0 the share of its captions that ``glip pseudo-label`` (default threshold)
    keeps with the model, saved as shipped under ``work``, as teacher. Sets the shift on
    ``model`` and returns it with one row per shift tried."""
    from eval_demo import confident_mistakes, pseudo_label_keep_rate

    bias0 = model.heads["grounding"].bias0
    base = bias0.detach().clone()
    rows: list[dict[str, float]] = []
    # Ascending: the teacher keeps more as the shift rises, so with ``keep`` the first shift
    # that keeps enough is the answer and the higher ones need no measuring.
    for shift in sorted(shifts):
        with torch.no_grad():
            bias0.copy_(base + shift)
        kinds = confident_mistakes(model, calib.val_json, calib.image_dir, 0.5)
        row = {"shift": shift, "detections": kinds.get("detections", 0), "right": kinds.get("right", 0)}
        line = f"  bias0 {shift:+.2f}: {row['right']} of {row['detections']} detections above 0.5 right"
        if keep > 0:
            assert work is not None, "keep > 0 needs a work folder for the teacher's runs"
            folder, _ = _train_demo().save_demo(model, work / f"shift{shift:+.2f}")
            # A fresh folder for the teacher's run: glip pseudo-label resumes from the shards
            # of its folder, which an earlier run of this script at this shift would have left.
            with tempfile.TemporaryDirectory(dir=work) as labels:
                row["keep"] = pseudo_label_keep_rate(str(folder), calib.root, Path(labels))
            line += f", the teacher keeps {row['keep']:.2f} of the captions"
        rows.append(row)
        print(line, flush=True)
        if keep > 0 and row["keep"] >= keep:
            break
    best = choose_shift(rows, precision, keep)
    if keep > 0 and best == min(shifts):
        print(f"  the lowest shift tried, {best:+.2f}, keeps enough: the rule's answer may lie below it")
    with torch.no_grad():
        bias0.copy_(base + best)
    return best, rows


def all_classes_set(work: Path, seed: int) -> Any:
    """The synthetic set of the all-classes stage: the demo's sizes with no pair held out
    (``work/data_all_classes``, data seed ``seed + 5``)."""
    from glip.data import generate_synthetic

    return generate_synthetic(work / "data_all_classes", seed=seed + 5, **{**_train_demo().DEMO_DATA, "held_out": 0})


def with_sources(cfg: Any, sources: list[tuple[str, Path, Path, float]]) -> Any:
    """``cfg`` training on ``(format, json, image folder, weight)`` sources (``data.sources``;
    the single-source ``data.train_json`` / ``train_images`` cleared)."""
    from glip.config import config_from_dict, config_to_dict

    rows = [
        {"format": f, "train_json": str(path), "train_images": str(images), "weight": w}
        for f, path, images, w in sources
    ]
    data = {**config_to_dict(cfg)["data"], "sources": rows, "train_json": "", "train_images": ""}
    return config_from_dict({**config_to_dict(cfg), "data": data})


def detection_stage(
    name: str,
    start: Path,
    out: Path,
    ds: Any,
    steps: int,
    fusion_lr_factor: float,
    seed: int,
    grounded_captions: float = 0.0,
) -> Path | None:
    """Detection from the model folder ``start`` on the synthetic set ``ds``
    (:data:`BIND_RECIPE`, the fusion's text path at ``fusion_lr_factor``); with
    ``grounded_captions`` > 0 also the set's captions as grounding data (its
    ``grounding_train.json``: the caption is the prompt, each named shape's noun phrase its
    positive), drawn with that weight against detection's 1. The trained model folder, or
    None when the run was interrupted (a rerun resumes)."""
    from glip.config import load_config
    from glip.engine import train

    cfg = load_config(
        start / "config.yaml",
        [
            *BIND_RECIPE, f"solver.fusion_lr_factor={fusion_lr_factor}", "data.sources=[]",
            f"data.train_json={ds.train_json}", f"data.train_images={ds.image_dir}",
            f"solver.max_iter={steps}", f"solver.warmup_iters={max(steps // 20, 1)}",
            f"solver.checkpoint_period={max(steps // 4, 1)}", f"solver.seed={seed}",
        ],
    )  # fmt: skip
    if grounded_captions > 0:
        grounding = ds.root / "grounding_train.json"
        cfg = with_sources(
            cfg, [("coco", ds.train_json, ds.image_dir, 1.0), ("mdetr", grounding, ds.image_dir, grounded_captions)]
        )
    begin = time.time()
    result = train(cfg, out, resume=True, cpu=True, weights=start)
    if result.interrupted_by is not None:
        print(f"interrupted at {name} step {result.progress.step}; run again to resume")
        return None
    print(f"{name} stage: {result.progress.step} steps in {(time.time() - begin) / 60:.1f} min")
    return out / "model"


LANGUAGE_HEADS = ("vqa", "caption")


def resolve_folder(name: str) -> Path:
    """A model folder, or a zoo name's folder."""
    from glip.hub.fetch import resolve_weights

    return Path(name) if Path(name).is_dir() else Path(resolve_weights(name))


def take_language_heads(model: Any, donor: Any, names: tuple[str, ...] = LANGUAGE_HEADS) -> None:
    """Puts ``donor``'s heads ``names`` (answer and caption by default) with their config
    sections on ``model``. Both must share every tensor outside the grounding, mask and
    language heads (the trunk those heads read), or a ``ValueError`` names the first that
    differs."""
    own = ("heads.grounding.", "heads.mask.", *(f"heads.{h}." for h in LANGUAGE_HEADS))
    theirs = donor.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(own) and not torch.equal(value.float(), theirs[key].float()):
            raise ValueError(f"the donor of the {'/'.join(names)} heads was trained on another trunk: {key} differs")
    for name in names:
        model.heads[name] = donor.heads[name]
        setattr(model.config.model.heads, name, getattr(donor.config.model.heads, name))


def set_caption_decoding(model: Any, beam_size: int | None, rerank: str | None) -> None:
    """The caption head's default decoding (``model.heads.caption.beam_size`` / ``rerank``,
    head and config), each left as it is when None."""
    section = model.config.model.heads.caption
    if beam_size is not None:
        model.heads["caption"].beam_size = section.beam_size = beam_size
    if rerank is not None:
        model.heads["caption"].rerank = section.rerank = rerank


def multitask_stage(args: argparse.Namespace, ds: Any, start: Path, work: Path) -> tuple[Path, int, float] | None:
    """The multi-task stage (:data:`VL_RECIPE`): detection with masks, VQA and captions by
    ``--source-weights``, the trunk frozen, from the model folder ``start``; the trained
    folder, its steps and minutes, or None when interrupted (a rerun resumes)."""
    from glip.config import load_config
    from glip.engine import train

    # The captions of the set the grounding stage trains on (three pairs held out), or of
    # the all-classes stage's set (every colour-shape pair: a caption head that never read
    # "red triangle" cannot write it).
    captions = all_classes_set(work, args.seed) if args.caption_data == "all-classes" else ds
    files = [
        ("coco", ds.train_json, ds.image_dir),
        ("vqa", ds.root / "vqa_train.json", ds.image_dir),
        ("captions", captions.root / "captions_train.json", captions.image_dir),
    ]
    cfg = load_config(
        start / "config.yaml",
        [
            *VL_RECIPE,
            *(HARD_NEGATIVES if args.continue_heads or args.bind_steps > 0 else []),
            "model.heads.vqa.enabled=true", "model.heads.caption.enabled=true",
            f"model.heads.vqa.readout_dim={args.readout_dim}", f"model.heads.caption.readout_dim={args.readout_dim}",
            f"model.heads.caption.context_layers={args.caption_context_layers}",
            f"model.heads.caption.context_positions={args.caption_context_positions}",
            f"solver.max_iter={args.steps}", f"solver.warmup_iters={max(args.steps // 20, 1)}",
            f"solver.checkpoint_period={max(args.steps // 4, 1)}", f"solver.seed={args.seed}",
            *args.overrides,
        ],
    )  # fmt: skip
    # A weight of 0 leaves its source out (``--source-weights 0 1 0 train.tuning=vqa``: the
    # answer head alone, on the questions alone).
    cfg = with_sources(cfg, [(*source, w) for source, w in zip(files, args.source_weights) if w > 0])
    begin = time.time()
    result = train(cfg, work / "train", resume=True, cpu=True, weights=start)
    minutes = (time.time() - begin) / 60
    if result.interrupted_by is not None:
        print(f"interrupted at step {result.progress.step}; run again to resume")
        return None
    print(f"trained {result.progress.step} steps in {minutes:.1f} min")

    return work / "train" / "model", result.progress.step, minutes


def evaluate_all(model, ds, fresh, out: Path) -> dict[str, Any]:
    """Box (and mask) AP on the demo's validation images; VQA accuracy and caption metrics
    on the fresh set, for the heads the model has."""
    from glip.tools.caption_cli import evaluate_caption_model
    from glip.tools.vqa_cli import evaluate_vqa

    report: dict[str, Any] = {
        "detection": _train_demo().evaluate(model, ds.val_json, ds.image_dir, set(ds.held_out), masks=model.has_masks)
    }
    if "vqa" in model.heads:
        metrics = evaluate_vqa(model, fresh.root / "vqa_val.json", fresh.image_dir, out / "vqa", progress=False)
        report["vqa"] = {"accuracy": metrics["accuracy"], "per_question_type": metrics["per_question_type"]}
    if "caption" in model.heads:
        scores = evaluate_caption_model(
            model, fresh.root / "captions_val.json", fresh.image_dir, out / "caption", False
        )
        report["caption"] = dict(scores.metrics)
    return report


def print_report(name: str, report: dict[str, Any]) -> None:
    print(f"\n{name}")
    for split, row in report["detection"].items():
        masks = f"  mask AP {row['segm_AP']:5.1f}  AP50 {row['segm_AP50']:5.1f}" if "segm_AP" in row else ""
        print(f"  {split:<9} box AP {row['AP']:5.1f}  AP50 {row['AP50']:5.1f}{masks}")
    if "vqa" in report:
        types = ", ".join(f"{k} {v:.2f}" for k, v in report["vqa"]["per_question_type"].items())
        print(f"  VQA accuracy {report['vqa']['accuracy']:.3f} ({types})")
    if "caption" in report:
        print("  captions: " + ", ".join(f"{k} {v:.3f}" for k, v in report["caption"].items()))


def main() -> int:
    sys.path.insert(0, str(REPO))
    from glip.modeling.heads.caption import RERANKERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/demo-vl", help="data, training output and report")
    p.add_argument("--from", dest="start", default="demo-shapes", help="the detector: a zoo name or folder")
    p.add_argument("--out", default=str(REPO / "glip" / "assets" / "demo-shapes"), help="zoo folder to write")
    p.add_argument(
        "--steps", type=int, default=2000, help="multi-task steps (0: none; the language heads of --from are kept)"
    )
    p.add_argument("--source-weights", type=float, nargs=3, default=(1.0, 2.0, 1.0), metavar=("DET", "VQA", "CAP"),
                   help="sampling weights of the detection, VQA and caption batches (1 2 1; 0 leaves one out)")  # fmt: skip
    p.add_argument("--readout-dim", type=int, default=128, help="the answer and caption heads' read-out width")
    p.add_argument("--caption-context-layers", type=int, default=1,
                   help="causal self-attention layers of the caption head before its read-out (a continued head "
                        "without them gets them fresh)")  # fmt: skip
    p.add_argument("--heads-from", metavar="FOLDER",
                   help="skip the multi-task stage and take the answer and caption heads of FOLDER: a model made by "
                        "this script's multi-task stage from the same --from detector (the trunk they read must be "
                        "the same; checked), so that the two stages can run side by side")  # fmt: skip
    p.add_argument("--caption-from", metavar="FOLDER",
                   help="then the caption head of FOLDER (as --heads-from: the same trunk), e.g. a caption-heavy "
                        "multi-task run beside the one --heads-from names")  # fmt: skip
    p.add_argument("--caption-beam", type=int, help="the shipped caption head's beam size (default: as trained)")
    p.add_argument("--caption-data", choices=("held-out", "all-classes"), default="held-out",
                   help="the multi-task stage's captions: the grounding stage's set (three pairs held out) or the all-classes set")  # fmt: skip
    p.add_argument("--caption-rerank", choices=RERANKERS,
                   help="how the shipped caption head chooses among its beam (default: as trained)")  # fmt: skip
    p.add_argument("--caption-context-positions", type=int, default=64,
                   help="learned position embeddings of the caption context (0: none)")  # fmt: skip
    p.add_argument("--num-fresh", type=int, default=100, help="fresh images of the VQA / caption evaluation")
    p.add_argument("--fresh-seed", type=int, default=4242)
    p.add_argument("--seed", type=int, default=0, help="the demo's data seed (train_demo.py's --seed)")
    p.add_argument("--bind-steps", type=int, default=1500,
                   help="steps of the binding stage before the multi-task one (BIND_RECIPE; 0: none)")  # fmt: skip
    p.add_argument("--bind-fusion-lr-factor", type=float, default=0.3,
                   help="the fusion text path's rate in the binding stage, a factor of the base rate")  # fmt: skip
    p.add_argument("--all-classes-steps", type=int, default=300,
                   help="steps of the grounding and mask heads on every colour-shape pair after the multi-task "
                        "stage (0: none)")  # fmt: skip
    p.add_argument("--all-classes-fusion-lr-factor", type=float, default=0.0,
                   help="the fusion's text path in the all-classes stage, times the base rate (0: frozen, so the "
                        "answer and caption heads' inputs stay the same; else retrain them after it)")  # fmt: skip
    p.add_argument("--grounded-captions", type=float, default=1.0,
                   help="the all-classes stage also grounds the synthetic captions' noun phrases (grounding_train.json), "
                        "drawn with this weight against detection's 1 (0: detection alone)")  # fmt: skip
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="shift the grounding head's bias0 by the calibration rule (--calibration-keep, --calibration-precision)")  # fmt: skip
    p.add_argument("--calibration-precision", type=float, default=0.98,
                   help="with --calibration-keep 0: the share of detections above 0.5 that must name the shape under them")  # fmt: skip
    p.add_argument("--calibration-keep", type=float, default=0.85,
                   help="the lowest bias0 at which `glip pseudo-label` still keeps this share of the calibration "
                        "captions (0: the --calibration-precision rule instead)")  # fmt: skip
    p.add_argument("--min-size-test", type=int, default=160,
                   help="the shipped model's test size (shorter side; the longer at most twice it): the demo's "
                        "images are 128 to 192 px, and the detector trained at 128 and 160")  # fmt: skip
    p.add_argument("--continue-heads", action="store_true",
                   help="continue the answer and caption heads of --from (the shipped model) instead of fresh ones, "
                        "with negatives that share a word with the image's shapes (HARD_NEGATIVES)")  # fmt: skip
    p.add_argument(
        "--eval",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="evaluate before and after (--no-eval: train and save only; scripts/eval_demo.py measures)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: up to 4)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()

    from glip.data import generate_synthetic
    from glip.data.captions import load_coco_captions
    from glip.hub.loading import load_model
    from glip.modeling.heads.caption import restrict_vocabulary

    torch.set_num_threads(args.threads or max(1, min(4, os.cpu_count() or 1)))
    work = Path(args.work)
    demo = _train_demo()
    ds = generate_synthetic(work / "data", seed=args.seed, **demo.DEMO_DATA)
    fresh = generate_synthetic(
        work / "fresh", num_train=0, num_val=args.num_fresh, image_size=demo.DEMO_DATA["image_size"],
        seed=args.fresh_seed,
    )  # fmt: skip
    print("held-out categories:", ", ".join(ds.held_out))
    # A copy of the detector: --out may be the folder it came from, and a rerun resumes.
    start_folder = work / "detector"
    if not start_folder.is_dir():
        shutil.copytree(resolve_folder(args.start), start_folder)
    before: dict[str, Any] = {}
    if args.eval:
        detector = load_model(start_folder)
        before = evaluate_all(detector, ds, fresh, work / "eval_before")
        print_report(f"the detector ({args.start})", before)
        del detector

    if args.bind_steps > 0:
        start_folder = detection_stage(
            "binding", start_folder, work / "bind", ds, args.bind_steps, args.bind_fusion_lr_factor, args.seed
        )
        if start_folder is None:
            return 1
    steps, minutes = 0, 0.0
    final = start_folder
    if args.heads_from is None and args.steps > 0:
        trained = multitask_stage(args, ds, start_folder, work)
        if trained is None:
            return 1
        final, steps, minutes = trained
    if args.all_classes_steps > 0:
        # Every colour-shape pair, the three the grounding stage held out included, as phrases
        # for the grounding and mask heads alone (fusion frozen: the answer and caption heads'
        # inputs stay the ones they were trained on).
        every = all_classes_set(work, args.seed)
        final = detection_stage(
            "all-classes",
            final,
            work / "all_classes",
            every,
            args.all_classes_steps,
            args.all_classes_fusion_lr_factor,
            args.seed,
            grounded_captions=args.grounded_captions,
        )
        if final is None:
            return 1
    model = load_model(final)
    if args.heads_from is not None:
        take_language_heads(model, load_model(resolve_folder(args.heads_from)))
    if args.caption_from is not None:
        take_language_heads(model, load_model(resolve_folder(args.caption_from)), ("caption",))
    set_caption_decoding(model, args.caption_beam, args.caption_rerank)
    model.config.input.min_size_test = args.min_size_test
    model.config.input.max_size_test = 2 * args.min_size_test
    after: dict[str, Any] = {}
    if args.eval:
        after = evaluate_all(model, ds, fresh, work / "eval_after")
        print_report("after multi-task training", after)
    if "caption" in model.heads and model.heads["caption"].vocab is None:  # a continued head is cut already
        # The caption decoder keeps the rows of the training captions' words and [SEP] only
        # (their logits unchanged): 18 of 30522 rows for the demo, 23 MB fewer in fp16.
        captions = load_coco_captions(ds.root / "captions_train.json").captions.values()
        words = {t for group in captions for c in group for t in model.tokenizer(c)["input_ids"]}
        words.discard(model.tokenizer.cls_token_id)
        model.heads["caption"] = restrict_vocabulary(model.heads["caption"], sorted(words))
        model.config.model.heads.caption.vocab = sorted(words)
    calibration: dict[str, Any] = {}
    if args.calibrate:
        calib = generate_synthetic(
            work / "calibration", num_train=0, num_val=100, image_size=demo.DEMO_DATA["image_size"], seed=args.seed + 2000
        )  # fmt: skip
        rule = (
            f"teacher keeps {args.calibration_keep}"
            if args.calibration_keep > 0
            else f"precision {args.calibration_precision}"
        )
        print(f"calibrating on {calib.root} ({rule} above 0.5)")
        shift, rows = calibrate_bias(
            model,
            calib,
            args.calibration_precision,
            CALIBRATION_SHIFTS,
            args.calibration_keep,
            work / "calibration_runs",
        )
        calibration = {"shift": shift, "rows": rows}
        print(f"  bias0 shifted by {shift:+.2f}")
        if args.eval:
            after["detection_calibrated"] = demo.evaluate(
                model, ds.val_json, ds.image_dir, set(ds.held_out), masks=True
            )
    out, size = demo.save_demo(model, args.out)
    shipped: dict[str, Any] = {}
    if args.eval:
        shipped = evaluate_all(load_model(out), ds, fresh, work / "eval_shipped")
        print_report(f"as shipped ({out}, {size / 1e6:.1f} MB, fp16)", shipped)
    report = {
        "steps": steps, "train_minutes": minutes, "heads_from": args.heads_from, "caption_from": args.caption_from, "held_out": list(ds.held_out),
        "before": before, "after": after, "calibration": calibration, "shipped": shipped, "folder": str(out), "size_mb": size / 1e6,
    }  # fmt: skip
    (work / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
