"""Peak memory of reading a large MDETR-style caption json: parsed whole vs the on-disk index.

For each size, writes a synthetic caption json (4 boxes per caption, about 0.9 KB of json
each; generated, never checked in), then in fresh processes measures:

- ``memory``: ``CocoIndex.load`` (today's path) and the training ids;
- ``build``: the one-time conversion to the memory-mapped index (``glip.data.json_index``);
- ``mapped``: opening the index, the training ids, and reading 2 000 random images'
  records and annotations (what a loader process does).

Each row prints the process's peak RSS added over its state after the imports (``VmHWM``,
which counts the mapped file pages it touched, shared with every other process) and its
private memory added at the end (``RssAnon``), with the wall time.

    python scripts/bench_index.py --sizes 20000 200000 [--out /tmp/bench_index] [--skip-memory 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "a man woman dog cat red blue small big car tree on in with the of near holding".split()


def write_caption_json(path: Path, captions: int, seed: int = 0) -> None:
    """An MDETR-style json streamed to ``path``: one image per caption, 4 boxes each."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"images": [')
        for i in range(captions):
            caption = " ".join(rng.choice(WORDS) for _ in range(12))
            image = {"id": i, "file_name": f"{i:08d}.jpg", "height": 480, "width": 640, "caption": caption}
            f.write(("," if i else "") + json.dumps(image))
        f.write('], "annotations": [')
        for k in range(captions * 4):
            x, y = rng.uniform(0, 500), rng.uniform(0, 400)
            ann = {
                "id": k, "image_id": k // 4, "bbox": [x, y, rng.uniform(2, 140), rng.uniform(2, 80)],
                "area": rng.uniform(4, 10000), "iscrowd": 0, "category_id": 1,
                "tokens_positive": [[4 * (k % 4), 4 * (k % 4) + 3]], "score": rng.random(),
            }  # fmt: skip
            f.write(("," if k else "") + json.dumps(ann))
        f.write('], "categories": [{"id": 1, "name": "object"}]}')


def _status(field: str) -> int:
    """``field`` of /proc/self/status in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child(mode: str, path: str, cache: str) -> None:
    import numpy as np

    from glip.data.annotations import CocoIndex, has_valid_annotation
    from glip.data.json_index import MappedCocoIndex, build_index

    # Reset the peak to the state after the imports (Linux: writing 5 to clear_refs).
    Path("/proc/self/clear_refs").write_text("5")
    hwm0, anon0 = _status("VmHWM"), _status("RssAnon")
    start = time.perf_counter()
    if mode == "memory":
        index = CocoIndex.load(path)
        ids = [i for i in index.image_ids if has_valid_annotation(index.annotations[i])]
    elif mode == "build":
        Path(cache).mkdir(parents=True)
        build_index(path, cache)
        ids = []
    else:
        mapped = MappedCocoIndex(cache)
        ids = mapped.valid_ids()
        rng = np.random.default_rng(0)
        for j in rng.integers(0, len(ids), 2000).tolist():
            mapped.images[ids[j]], mapped.annotations[ids[j]]
    seconds = time.perf_counter() - start
    print(json.dumps({"hwm": _status("VmHWM") - hwm0, "anon": _status("RssAnon") - anon0, "s": seconds, "n": len(ids)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--skip-memory", type=int, nargs="*", default=[], help="sizes not read whole (too big)")
    parser.add_argument("--out", default="", help="folder for the generated jsons (default: a temporary one)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_index."))
    root.mkdir(parents=True, exist_ok=True)
    print("| captions | json | path | time | peak RSS added | private memory added |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        path, cache = root / f"captions_{n}.json", root / f"captions_{n}.glipidx"
        if not path.exists():
            write_caption_json(path, n)
        modes = ["build", "mapped"] if n in args.skip_memory else ["memory", "build", "mapped"]
        for mode in modes:
            if mode == "build" and cache.exists():
                import shutil

                shutil.rmtree(cache)
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(path), str(cache)], capture_output=True, text=True
            )
            if out.returncode:
                raise SystemExit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            size = path.stat().st_size / 2**20
            print(
                f"| {n:,} | {size:.0f} MiB | {mode} | {r['s']:.1f} s | +{r['hwm'] / 1024:.0f} MiB "
                f"| +{r['anon'] / 1024:.0f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
