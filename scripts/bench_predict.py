"""Per-image latency and peak memory of a full-size GLIP-T (random weights).

Measures what the official timing in the fixtures REPORT (§10) measured: chelsea at
MIN/MAX_SIZE_TEST 800/1333 (an 800x1216 padded input), eval, float32, 2 CPU threads,
one warm-up then the median of several timed calls, peak RSS of the whole process.
Each setting runs in its own process so peak memory is its own.

    python scripts/bench_predict.py                 # CPU, batch 1 and 4
    python scripts/bench_predict.py --device cuda   # GPU as well (when available)
    python scripts/bench_predict.py --dtype bf16    # autocast on the GPU

Official reference on the same kind of 2-vCPU machine: 53.5 s per image, 3088 MiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OFFICIAL_CPU_S = 53.5
OFFICIAL_CPU_RSS_MIB = 3088
CAPTION = "a cat. a remote control. a dog."


def _chelsea():
    try:
        from skimage import data

        return data.chelsea()
    except ImportError:
        import torch

        case = Path(__file__).resolve().parents[2] / "shared/fixtures/official/tiny_glip_t/case_chelsea.pth"
        return torch.load(case, weights_only=True)["image_original_rgb_uint8"].numpy()


def run_one(device: str, batch: int, runs: int, threads: int, dtype: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from glip.api import Predictor
    from glip.config import load_config
    from glip.modeling.build import build_model
    from glip.modeling.text_encoder import load_bert_config
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    te = BUNDLED_TEXT_ENCODERS["bert-base-uncased"]
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "glip-t.yaml")
    model = build_model(cfg, load_bert_config(te), load_tokenizer(te)).eval()
    rss_after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    predictor = Predictor(model, device=device, batch_size=batch)
    images = [_chelsea()] * batch

    def call():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bf16"):
            predictor.predict(images, CAPTION, threshold=0.5)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    call()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = [call() for _ in range(runs)]
    out = {
        "device": device,
        "batch": batch,
        "dtype": dtype,
        "runs_s": [round(t, 3) for t in times],
        "median_s_per_image": statistics.median(times) / batch,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_mib": rss_after_build,
    }
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if available)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 4)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        device, batch = args._one.split(",")
        print(json.dumps(run_one(device, int(batch), args.runs, args.threads, args.dtype)))
        return
    import torch

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for device in devices:
        for batch in args.batch or [1, 4]:
            cmd = [
                sys.executable,
                __file__,
                "--_one",
                f"{device},{batch}",
                "--runs",
                str(args.runs),
                "--threads",
                str(args.threads),
                "--dtype",
                args.dtype,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{r['device']:<5} batch {r['batch']}  {r['dtype']}  {r['median_s_per_image']:7.2f} s/img  "
                f"peak RSS {r['peak_rss_mib']:6.0f} MiB"
                + (f"  peak CUDA {r['peak_cuda_mib']:6.0f} MiB ({r['gpu']})" if "peak_cuda_mib" in r else "")
                + (
                    f"   vs official CPU: {OFFICIAL_CPU_S / r['median_s_per_image']:.1f}x faster, "
                    f"{r['peak_rss_mib'] / OFFICIAL_CPU_RSS_MIB:.2f}x its peak memory"
                    if r["device"] == "cpu"
                    else ""
                ),
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
