"""Loader memory and speed: streamed shards (data.train_shards) vs the json path.

Builds synthetic MDETR-style data (a caption with 4 grounded boxes per 32 x 32 JPEG) as shard
sets of each size and, for the json path, as one json; each is written once under --root
(default /tmp/glip_bench_data; never checked in) and reused. For each it reads
--samples samples through the training loader (tiny config's transform and tokenizer, 2
workers) in a fresh process and prints the loader process's peak RSS (main process; and
its workers' peak USS) and samples/s. With --train-steps it also times the tiny config's
training step on this machine (images/s a step consumes).

    python scripts/bench_data.py --sizes 10000 100000 1000000 --json-sizes 10000 100000 --train-steps 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPTION = "a red circle left of a blue square near a green triangle and a small diamond"
PHRASES = [(2, 12), (21, 32), (40, 54), (65, 78)]


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _anns(i: int) -> list[dict]:
    return [{"id": 4 * i + g, "image_id": i, "bbox": [1 + g, 2 + g, 12, 10], "iscrowd": 0, "category_id": 1,
             "tokens_positive": [list(PHRASES[g])], "area": 120} for g in range(4)]  # fmt: skip


def make_shards(root: Path, n: int) -> Path:
    from glip.data.shards.convert import ShardSample, write_shard_set
    from glip.data.shards.schema import make_record

    out = root / f"shards_{n}"
    if (out / "manifest.json").is_file():
        return out
    images = [_jpeg(s) for s in range(64)]

    def samples():
        for i in range(n):
            image = {"id": i, "file_name": f"{i}.jpg", "height": 32, "width": 32, "caption": CAPTION}
            yield ShardSample(f"{i:09d}", images[i % 64], "jpg", make_record(f"{i:09d}", image, _anns(i)))

    write_shard_set(samples(), out, shard_size=1000, source="bench", kind="grounding")
    return out


def make_json(root: Path, n: int) -> tuple[Path, Path]:
    out = root / f"json_{n}"
    ann = out / "train.json"
    if ann.is_file():
        return ann, out / "images"
    (out / "images").mkdir(parents=True, exist_ok=True)
    for s in range(64):
        (out / "images" / f"{s}.jpg").write_bytes(_jpeg(s))
    images = [{"id": i, "file_name": f"{i % 64}.jpg", "height": 32, "width": 32, "caption": CAPTION} for i in range(n)]
    anns = [a for i in range(n) for a in _anns(i)]
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return ann, out / "images"


def _config(overrides: list[str]):
    from glip.config import load_config

    return load_config(REPO / "configs" / "synthetic" / "tiny.yaml", overrides)


def measure(kind: str, path: str, images: str, samples: int, batch: int) -> None:
    """In this process: build the loader, read ``samples`` samples, print one json line."""
    import psutil
    import torch

    from glip.engine.data import ShardedBatchSampler, build_dataset, make_loader
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    torch.set_num_threads(1)
    proc = psutil.Process()
    peak = {"main": proc.memory_info().rss, "workers": 0}
    base = peak["main"]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                peak["main"] = max(peak["main"], proc.memory_info().rss)
                kids = proc.children(recursive=True)
                peak["workers"] = max(peak["workers"], sum(k.memory_full_info().uss for k in kids))
            except psutil.Error:
                pass
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    data = (
        [f"data.train_shards={path}"]
        if kind == "shards"
        else [f"data.train_json={path}", f"data.train_images={images}"]
    )
    cfg = _config([*data, "data.format=mdetr", "data.num_workers=2"])
    t0 = time.perf_counter()
    dataset = build_dataset(cfg, load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"]), train=True)
    setup = time.perf_counter() - t0
    loader = make_loader(dataset, ShardedBatchSampler(len(dataset), batch, seed=0), cfg)
    n, t0 = 0, None
    for b in loader:
        if t0 is None:  # timing starts at the first batch (worker start-up excluded)
            t0, first = time.perf_counter(), len(b)
        n += len(b)
        if n >= samples:
            break
    rate = (n - first) / (time.perf_counter() - t0)
    done.set()
    time.sleep(0.1)
    print(json.dumps({"kind": kind, "size": len(dataset), "setup_s": setup, "samples_per_s": rate,
                      "peak_rss_mib": peak["main"] / 2**20, "rss_added_mib": (peak["main"] - base) / 2**20,
                      "workers_uss_mib": peak["workers"] / 2**20}))  # fmt: skip


def train_rate(root: Path, steps: int) -> float:
    """Images/s of the tiny config's training step here (median step of a short CPU run)."""
    from glip.data import generate_synthetic

    shapes = generate_synthetic(root / "shapes", num_train=64, num_val=4, seed=0)
    out = root / "train_run"
    cmd = [sys.executable, "-m", "glip.cli", "train", "--config", str(REPO / "configs/synthetic/tiny.yaml"),
           "--out", str(out), "--device", "cpu", f"data.train_json={shapes.train_json}",
           f"data.train_images={shapes.image_dir}", f"solver.max_iter={steps}", "train.log_period=1",
           "solver.checkpoint_period=0"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates = sorted(json.loads(x)["images_per_s"] for x in (out / "metrics.jsonl").read_text().splitlines()[2:] if
                   "images_per_s" in x)  # fmt: skip
    return rates[len(rates) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/glip_bench_data")
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--json-sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--samples", type=int, default=3000, help="samples read per measurement")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=0, help="also time this many tiny-config training steps")
    p.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # kind path images: one measurement
    args = p.parse_args()
    if args.measure:
        measure(*args.measure, args.samples, args.batch)
        return 0
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    runs = [("shards", str(make_shards(root, n)), "-") for n in args.sizes]
    runs += [("json", *map(str, make_json(root, n))) for n in args.json_sizes]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    print(f"{'data':<7} {'samples':>9} {'setup s':>8} {'samples/s':>10} {'peak RSS MiB':>13} {'+RSS MiB':>9} "
          f"{'workers USS MiB':>16}")  # fmt: skip
    for kind, path, images in runs:
        cmd = [sys.executable, __file__, "--measure", kind, path, images, "--samples", str(args.samples),
               "--batch", str(args.batch)]  # fmt: skip
        line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()
        r = json.loads(line[-1])
        print(f"{kind:<7} {r['size']:>9} {r['setup_s']:>8.1f} {r['samples_per_s']:>10.0f} {r['peak_rss_mib']:>13.0f} "
              f"{r['rss_added_mib']:>9.0f} {r['workers_uss_mib']:>16.0f}", flush=True)  # fmt: skip
    if args.train_steps:
        rate = train_rate(root, args.train_steps)
        print(f"tiny config training step: {rate:.1f} images/s consumed (CPU, this machine)")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
