"""Peak memory of ``glip evaluate --task coco --ann GT --results R`` on a synthetic ground
truth of N images (generated into a temporary folder, never kept), to size evaluation of
large sets (docs/evaluation.md, "Memory").

    python scripts/bench_eval_memory.py --images 100000                     # O365-like: boxes only
    python scripts/bench_eval_memory.py --images 20000 --polygon-points 12  # COCO / LVIS-like polygons
    python scripts/bench_eval_memory.py --images 10000 20000 40000          # a series, to fit MB per image

Each image gets ``--boxes`` ground-truth boxes of random categories among ``--categories``
and ``--dets`` scored detections (half near a ground-truth box, half random). The command
runs in a child process; its peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (each size
in a fresh child process; ``ru_maxrss`` of the children is a maximum over the sizes run so far, so
run one size per invocation for that column) and its peak anonymous RSS, sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_set(folder: Path, images: int, categories: int, boxes: int, dets: int, points: int, seed: int) -> None:
    """``folder/gt.json`` and ``folder/results.json`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = images * boxes
    xy = rng.uniform(0, 500, (n, 2)).round(1)
    wh = rng.uniform(8, 140, (n, 2)).round(1)
    cats = rng.integers(1, categories + 1, n)
    anns = []
    for i in range(n):
        x, y, w, h = float(xy[i, 0]), float(xy[i, 1]), float(wh[i, 0]), float(wh[i, 1])
        ann = {"id": i + 1, "image_id": i // boxes + 1, "category_id": int(cats[i]), "bbox": [x, y, w, h],
               "area": round(w * h, 2), "iscrowd": 0}  # fmt: skip
        if points:  # a polygon of ``points`` vertices on the box's ellipse
            t = np.linspace(0, 2 * np.pi, points, endpoint=False)
            poly = np.stack([x + w / 2 * (1 + np.cos(t)), y + h / 2 * (1 + np.sin(t))], 1).round(2).ravel()
            ann["segmentation"] = [poly.tolist()]
        anns.append(ann)
    gt = {
        "images": [{"id": i + 1, "file_name": f"{i + 1:08d}.jpg", "height": 640, "width": 640} for i in range(images)],
        "annotations": anns,
        "categories": [{"id": k, "name": f"class {k}"} for k in range(1, categories + 1)],
    }
    (folder / "gt.json").write_text(json.dumps(gt))
    del gt, anns
    results = []
    near = dets // 2
    for i in range(images):
        own = rng.integers(i * boxes, (i + 1) * boxes, near)
        for j in own:
            jitter = rng.normal(0, 4, 4)
            box = [float(xy[j, 0] + jitter[0]), float(xy[j, 1] + jitter[1]), float(max(wh[j, 0] + jitter[2], 1)),
                   float(max(wh[j, 1] + jitter[3], 1))]  # fmt: skip
            results.append({"image_id": i + 1, "category_id": int(cats[j]), "bbox": [round(v, 1) for v in box],
                            "score": round(float(rng.uniform(0.3, 1.0)), 3)})  # fmt: skip
        for _ in range(dets - near):
            x, y = rng.uniform(0, 500, 2)
            results.append({"image_id": i + 1, "category_id": int(rng.integers(1, categories + 1)),
                            "bbox": [round(float(x), 1), round(float(y), 1), 50.0, 50.0],
                            "score": round(float(rng.uniform(0.0, 0.5)), 3)})  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results))


def measure(folder: Path, repo: Path = REPO) -> dict[str, float]:
    """Runs ``glip evaluate --results`` (the glip of checkout ``repo``) in a child; its peak
    RSS (``ru_maxrss``: anonymous memory plus the resident pages of mapped files such as
    torch's libraries, which memory pressure evicts), its peak anonymous RSS (``RssAnon`` of
    ``/proc/PID/status`` sampled every 50 ms: the evaluation's own data), time and AP. MiB."""
    cmd = [sys.executable, "-m", "glip.cli", "evaluate", "--task", "coco", "--ann", str(folder / "gt.json"),
           "--results", str(folder / "results.json"), "--out", str(folder / "eval")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    start, anon = time.time(), 0
    # cwd: ``python -m`` puts the working folder first on sys.path, before PYTHONPATH.
    child = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("RssAnon:"))
            anon = max(anon, int(line.split()[1]))
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child is reaped by poll()
    if child.returncode != 0:
        raise SystemExit(f"glip evaluate failed: {child.stderr.read()[-400:] if child.stderr else ''}")
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "peak_anon_mib": anon / 1024, "seconds": time.time() - start,
            "AP": metrics.get("AP", -1.0)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[100000], help="ground-truth images (one run per value)")
    p.add_argument("--categories", type=int, default=365, help="categories (365, as Objects365)")
    p.add_argument("--boxes", type=int, default=15, help="ground-truth boxes per image (15)")
    p.add_argument("--dets", type=int, default=20, help="detections per image in the results (20)")
    p.add_argument("--polygon-points", type=int, default=0, help="a polygon of this many points per box (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--glip", type=Path, default=REPO, help="the checkout whose glip runs (default: this one)")
    args = p.parse_args(argv)
    rows = []
    for images in args.images:
        with tempfile.TemporaryDirectory(prefix="glip-eval-mem-") as tmp:
            folder = Path(tmp)
            start = time.time()
            write_set(folder, images, args.categories, args.boxes, args.dets, args.polygon_points, args.seed)
            sizes = {name: (folder / f"{name}.json").stat().st_size / 2**20 for name in ("gt", "results")}
            row = {"images": images, "gt_mib": sizes["gt"], "results_mib": sizes["results"],
                   "generate_s": time.time() - start, **measure(folder, args.glip)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
