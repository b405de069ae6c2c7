"""Train a small GLIP on synthetic shapes on the CPU, evaluate it, save it as a zoo folder.

    python scripts/train_demo.py --work runs/demo --out glip/assets/demo-shapes

1. ``generate_synthetic``: coloured shapes, some colour-shape combinations held out of
   training (they appear only in validation: the model has seen "red" and "triangle",
   never "red triangle").
2. ``glip.engine.train`` with ``configs/synthetic/tiny.yaml`` (small Swin, pretrained and
   frozen all-MiniLM-L6-v2 text encoder), one process.
3. COCO-style box AP (IoU 0.50:0.95, 101-point interpolation, per category then averaged;
   a small self-contained re-implementation, no pycocotools) and AP50 on the validation
   images, prompting with every category name, split into seen and held-out categories.
4. ``save_model`` in fp16 with the text encoder referenced, not copied.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[N, 4]`` and ``[M, 4]`` ``(x, y, w, h)`` boxes (COCO: continuous areas)."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-12)


def average_precision(dets: list[tuple[int, float, np.ndarray]], gts: dict[int, np.ndarray], iou: float) -> float:
    """COCO AP of one category at one IoU threshold: detections ``(image, score, xywh)``
    matched greedily by score to unmatched ground truth of the same image; precision made
    monotone and sampled at 101 recall points. NaN when there is no ground truth."""
    num_gt = sum(len(g) for g in gts.values())
    if num_gt == 0:
        return float("nan")
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])
    used = {img: np.zeros(len(g), dtype=bool) for img, g in gts.items()}
    tp = np.zeros(len(order))
    for rank, i in enumerate(order):
        img, _, box = dets[i]
        g = gts.get(img)
        if g is None or len(g) == 0:
            continue
        ious = box_iou_xywh(box[None], g)[0]
        ious[used[img]] = -1
        j = int(np.argmax(ious))
        if ious[j] >= iou:
            used[img][j] = True
            tp[rank] = 1
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / num_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = [precision[k] if k < len(precision) else 0.0 for k in idx]
    return float(np.mean(sampled))


def evaluate(model, val_json: Path, image_dir: Path, names: list[str]) -> dict[str, dict[str, float]]:
    """AP and AP50 per category (prompt: every category name), from predictions above 0."""
    data = json.loads(val_json.read_text())
    cat_name = {c["id"]: c["name"] for c in data["categories"]}
    gts: dict[str, dict[int, list]] = {n: {} for n in names}
    for ann in data["annotations"]:
        gts[cat_name[ann["category_id"]]].setdefault(ann["image_id"], []).append(ann["bbox"])
    dets: dict[str, list] = {n: [] for n in names}
    for record in data["images"]:
        det = model.predict(image_dir / record["file_name"], names, threshold=0.0)
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            x1, y1, x2, y2 = box
            # Official COCO export: xyxy -> xywh with the inclusive-pixel +1 (TO_REMOVE).
            dets[names[label - 1]].append((record["id"], score, np.array([x1, y1, x2 - x1 + 1, y2 - y1 + 1])))
    out = {}
    for n in names:
        g = {img: np.asarray(b, dtype=np.float64) for img, b in gts[n].items()}
        aps = [average_precision(dets[n], g, t) for t in IOU_THRESHOLDS]
        out[n] = {"AP": float(np.mean(aps)), "AP50": aps[0], "num_gt": sum(len(b) for b in g.values())}
    return out


def summarise(per_cat: dict[str, dict[str, float]], held_out: set[str]) -> dict[str, dict[str, float]]:
    rows = {}
    for split, keep in (
        ("all", lambda n: True),
        ("seen", lambda n: n not in held_out),
        ("held-out", lambda n: n in held_out),
    ):
        vals = [v for n, v in per_cat.items() if keep(n) and v["num_gt"] > 0]
        if vals:
            rows[split] = {
                "AP": 100 * float(np.mean([v["AP"] for v in vals])),
                "AP50": 100 * float(np.mean([v["AP50"] for v in vals])),
                "categories": len(vals),
            }
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/demo", help="data and training output")
    p.add_argument("--out", default=str(REPO / "glip" / "assets" / "demo-shapes"), help="zoo folder to write")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=80)
    p.add_argument("--held-out", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
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
            *args.overrides,
        ],
    )  # fmt: skip
    start = time.time()
    result = train(cfg, work / "train", resume=True, cpu=True)
    minutes = (time.time() - start) / 60
    if result.interrupted_by is not None:
        print(f"interrupted at step {result.progress.step}; run again to resume")
        return 1
    print(f"trained {result.progress.step} steps in {minutes:.1f} min")

    names = list(ds.categories)
    report = {"steps": result.progress.step, "train_minutes": minutes, "held_out": list(ds.held_out)}
    best = None
    for which in ("model", "model_ema"):
        folder = work / "train" / which
        if not folder.is_dir():
            continue
        model = load_model(folder)
        per_cat = evaluate(model, ds.val_json, ds.image_dir, names)
        table = summarise(per_cat, set(ds.held_out))
        report[which] = {"summary": table, "per_category": per_cat}
        print(f"\n{which}:   {'AP':>6} {'AP50':>6}  categories")
        for split, row in table.items():
            print(f"  {split:<9} {row['AP']:6.1f} {row['AP50']:6.1f}  {row['categories']}")
        if best is None or table["all"]["AP"] > report[best]["summary"]["all"]["AP"]:
            best = which
    assert best is not None
    model = load_model(work / "train" / best)
    out = save_model(model, args.out, dtype=torch.float16, include_text_encoder=False)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    # The fp16 folder must give the same numbers (up to rounding): evaluate it as shipped.
    shipped = summarise(evaluate(load_model(out), ds.val_json, ds.image_dir, names), set(ds.held_out))
    report.update({"saved": best, "folder": str(out), "size_mb": size / 1e6, "shipped": shipped})
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\nsaved {best} to {out} ({size / 1e6:.1f} MB, fp16, text encoder referenced)")
    for split, row in shipped.items():
        print(f"  shipped {split:<9} AP {row['AP']:5.1f}  AP50 {row['AP50']:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
