"""Train a small GLIP on synthetic shapes on the CPU, evaluate it, save it as a zoo folder.

    python scripts/train_demo.py --work runs/demo --out glip/assets/demo-shapes

1. ``generate_synthetic``: coloured shapes, some colour-shape combinations held out of
   training (they appear only in validation: the model has seen "red" and "triangle",
   never "red triangle").
2. ``glip.engine.train`` with ``configs/synthetic/tiny.yaml`` (small Swin, pretrained and
   frozen all-MiniLM-L6-v2 text encoder), one process.
3. COCO box AP and AP50 (pycocotools) on the validation images, prompting with every
   category name, for all, seen and held-out categories; and, on fresh single-shape
   images (another seed), how often the top-scoring phrase names the shape: a model whose
   scores ignore the words is at chance (1/16) there, whatever its AP.
4. ``save_model`` in fp16 with the text encoder referenced, not copied.

The recipe (``configs/synthetic/tiny.yaml``) trains the head's fusion and in-head BERT
layers at a tenth of the base learning rate (``solver.fusion_lr_factor``): at the full
1e-3 those layers collapse every prompt token onto one vector within ~10 steps and the
trained model scores every phrase alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]


def evaluate(model, val_json: Path, image_dir: Path, held_out: set[str]) -> dict[str, dict[str, float]]:
    """COCO box AP / AP50 (pycocotools, through glip.evaluation) on the validation images,
    prompting with every category name; for all, seen and held-out categories."""
    from glip.evaluation.coco import evaluate_coco

    data = json.loads(val_json.read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    ids = [c["id"] for c in categories]
    results = []
    for record in data["images"]:
        det = model.predict(image_dir / record["file_name"], names, threshold=0.0)
        results.extend(det.to_coco(record["id"], category_ids=ids))
    rows = {}
    present = {a["category_id"] for a in data["annotations"]}
    for split, keep in (
        ("all", lambda n: True),
        ("seen", lambda n: n not in held_out),
        ("held-out", lambda n: n in held_out),
    ):
        cats = [i for i, n in zip(ids, names) if keep(n) and i in present]
        if cats:
            m = evaluate_coco(data, results, category_ids=cats)
            rows[split] = {"AP": 100 * m["AP"], "AP50": 100 * m["AP50"], "categories": len(cats)}
    return rows


def phrase_accuracy(model, out_dir: Path, num_images: int = 64, seed: int = 777) -> dict[str, float]:
    """On fresh one-shape images, all 16 names prompted: how often the top-scoring phrase is
    the shape's own name (``top1``), and how often its colour word and its shape word are
    right (``colour``, ``shape``)."""
    from glip.data import generate_synthetic, synthetic_categories

    ds = generate_synthetic(out_dir, num_train=0, num_val=num_images, image_size=(128, 192), seed=seed, max_objects=1)
    data = json.loads(ds.val_json.read_text())
    truth = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    prompt = synthetic_categories()
    hits = {"top1": 0, "colour": 0, "shape": 0}
    total = 0
    for record in data["images"]:
        if record["id"] not in truth:
            continue
        det = model.predict(ds.image_dir / record["file_name"], prompt, threshold=0.0)
        total += 1
        if not len(det.phrases):
            continue
        (colour, shape), (true_colour, true_shape) = det.phrases[0].split(), names[truth[record["id"]]].split()
        hits["top1"] += colour == true_colour and shape == true_shape
        hits["colour"] += colour == true_colour
        hits["shape"] += shape == true_shape
    return {k: v / max(total, 1) for k, v in hits.items()}


def top_phrase_accuracy(model, out_dir: Path, num_images: int = 64, seed: int = 777) -> float:
    """Fraction of fresh one-shape images whose top-scoring phrase is the shape's own name."""
    return phrase_accuracy(model, out_dir, num_images, seed)["top1"]


def probe_evaluator(out_dir: Path, num_images: int = 32):
    """An in-training evaluator: :func:`phrase_accuracy` on ``num_images`` one-shape images
    (another seed than the final report's), printed and logged as ``probe/*``."""

    def evaluate_probe(model, step: int) -> dict[str, float]:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                acc = phrase_accuracy(model, out_dir, num_images, seed=778)
        finally:
            model.train(was)
        print(f"step {step}: top phrase {100 * acc['top1']:.0f}% (colour {100 * acc['colour']:.0f}%, "
              f"shape {100 * acc['shape']:.0f}%) on {num_images} one-shape images", flush=True)  # fmt: skip
        return {f"probe/{k}": v for k, v in acc.items()}

    return evaluate_probe


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/demo", help="data and training output")
    p.add_argument("--out", default=str(REPO / "glip" / "assets" / "demo-shapes"), help="zoo folder to write")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=80)
    p.add_argument("--held-out", type=int, default=3)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-every", type=int, default=200, help="steps between phrase-accuracy probes (0: none)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()

    sys.path.insert(0, str(REPO))
    from glip.config import load_config
    from glip.data import generate_synthetic
    from glip.engine import train
    from glip.hub.checkpoint import load_model, save_model

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    work = Path(args.work)
    ds = generate_synthetic(
        work / "data", num_train=args.num_train, num_val=args.num_val, image_size=(128, 192),
        seed=args.seed, held_out=args.held_out,
    )  # fmt: skip
    print("held-out categories:", ", ".join(ds.held_out))
    warmup = max(args.steps // 10, 1)
    cfg = load_config(
        REPO / "configs" / "synthetic" / "tiny.yaml",
        [
            f"data.train_json={ds.train_json}", f"data.train_images={ds.image_dir}",
            f"solver.max_iter={args.steps}", f"solver.warmup_iters={warmup}",
            f"solver.checkpoint_period={max(args.steps // 4, 1)}", f"solver.seed={args.seed}",
            f"train.eval_period={args.probe_every}",
            *args.overrides,
        ],
    )  # fmt: skip
    start = time.time()
    evaluator = probe_evaluator(work / "probe") if args.probe_every > 0 else None
    result = train(cfg, work / "train", resume=True, cpu=True, evaluator=evaluator)
    minutes = (time.time() - start) / 60
    if result.interrupted_by is not None:
        print(f"interrupted at step {result.progress.step}; run again to resume")
        return 1
    print(f"trained {result.progress.step} steps in {minutes:.1f} min")

    report = {"steps": result.progress.step, "train_minutes": minutes, "held_out": list(ds.held_out)}
    best = None
    for which in ("model", "model_ema"):
        folder = work / "train" / which
        if not folder.is_dir():
            continue
        model = load_model(folder)
        table = evaluate(model, ds.val_json, ds.image_dir, set(ds.held_out))
        acc = phrase_accuracy(model, work / "single")
        top1 = acc["top1"]
        report[which] = {"summary": table, "top_phrase_accuracy": top1, "phrase_accuracy": acc}
        print(f"\n{which}:   {'AP':>6} {'AP50':>6}  categories")
        for split, row in table.items():
            print(f"  {split:<9} {row['AP']:6.1f} {row['AP50']:6.1f}  {row['categories']}")
        print(f"  top phrase correct on single-shape images: {100 * top1:.0f}% "
              f"(colour {100 * acc['colour']:.0f}%, shape {100 * acc['shape']:.0f}%)")  # fmt: skip
        if best is None or table["all"]["AP"] > report[best]["summary"]["all"]["AP"]:
            best = which
    assert best is not None
    model = load_model(work / "train" / best)
    out = save_model(model, args.out, dtype=torch.float16, include_text_encoder=False)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    # The fp16 folder must give the same numbers (up to rounding): evaluate it as shipped.
    shipped_model = load_model(out)
    shipped = evaluate(shipped_model, ds.val_json, ds.image_dir, set(ds.held_out))
    shipped_top1 = top_phrase_accuracy(shipped_model, work / "single")
    report.update(
        {"saved": best, "folder": str(out), "size_mb": size / 1e6, "shipped": shipped, "shipped_top1": shipped_top1}
    )
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\nsaved {best} to {out} ({size / 1e6:.1f} MB, fp16, text encoder referenced)")
    for split, row in shipped.items():
        print(f"  shipped {split:<9} AP {row['AP']:5.1f}  AP50 {row['AP50']:5.1f}")
    print(f"  shipped top phrase correct on single-shape images: {100 * shipped_top1:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
