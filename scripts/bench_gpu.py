"""The GPU checks of the speed issue in one run: batch throughput, mixed-precision parity,
and the fusion attention's FLOP rate as a fraction of the GPU's bf16 matrix rate.

* ``peak``: the dense bf16 matrix-product rate measured in this run (``--peak-n`` cubed,
  mean of 10 after 3 warm-ups), beside the datasheet rate when the GPU is known
  (``--peak-tflops`` overrides it). Every fraction below is given against both.
* ``throughput``: images/s of ``glip.Predictor`` at each ``--batch`` size, float32 (TF32
  off) and under each ``--autocast`` dtype; the median of ``--runs`` timed calls after 2
  warm-ups, the calls listed; the peak GPU memory of each setting. Batches above 1 run once
  per ``--fusion-chunk``: the images per fusion-attention call at inference (``auto``: on
  CUDA as many as ``fusion.CUDA_CHUNK_ELEMENTS`` allows, on the CPU one; ``1``: one at a time).
* ``parity``: float32 against autocast on ``--images`` images (the bench image and its
  variants), every detection kept: the largest and median score difference of each float32
  detection's twin (same phrase, best IoU) among the first 90, its box difference in pixels,
  and how often the top detection's phrase agrees. With ``--fixtures`` (the official golden
  folder, copied beside the repository where the machine cannot see ``../shared``), the same
  against the official float32 output of each tiny model and case.
* ``attention``: one fusion attention (``BiMultiHeadAttention`` at GLIP-T widths: C 256,
  D 768, E 2048, 8 heads) and one whole fusion block, at the pixel count of an
  ``--attention-size`` input (five levels, strides 8-128) and T = 256 (padded) or 16
  (trimmed) tokens, under bf16 autocast: the matrix FLOPs counted by
  ``torch.utils.flop_counter`` for one call, the median time of 20 calls, and their rate.

The model is a random-init GLIP-T (``configs/glip-t.yaml``, nothing downloaded) unless
``--model`` names a zoo model or folder. Everything goes to stdout and to ``--out`` (json).

    python scripts/bench_gpu.py --out gpu.json                       # on a CUDA machine
    python scripts/bench_gpu.py --device cpu --model demo-shapes --prompt "red circle. blue square." \\
        --size 128 192 --batch 1 2 --runs 1 --attention-size 128 192 --peak-n 256   # the CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_predict import CAPTION, _build_glip, _image  # noqa: E402

# Dense bf16 matrix rates by the vendors' datasheets (TFLOP/s, no sparsity), by the name
# torch reports; a lead, beside the rate this run measures.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """float32 matrix products and convolutions without TF32 (the reference of the parity)."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def datasheet_tflops(device: torch.device) -> float | None:
    """The datasheet's dense bf16 rate of the GPU, or None (a CPU, an unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name.split()), None)


def measure_peak(device: torch.device, n: int) -> dict:
    """Measured dense bf16 ``n x n x n`` matrix-product rate (TFLOP/s)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    seconds = (time.perf_counter() - t0) / 10
    return {"n": n, "measured_tflops": 2 * n**3 / seconds / 1e12, "datasheet_tflops": datasheet_tflops(device)}


def _images(size: tuple[int, int] | None, count: int) -> list[np.ndarray]:
    """The bench image (resized to ``size``, H x W, when given) and ``count - 1`` variants
    (flipped, rolled), so parity is not measured on one picture alone."""
    from PIL import Image

    base, _ = _image()
    if size is not None:
        base = np.asarray(Image.fromarray(base).resize((size[1], size[0]), Image.BILINEAR))
    out = [base]
    for i in range(1, count):
        variant = base[:, ::-1] if i % 2 else np.roll(base, base.shape[1] // (i + 1), axis=1)
        out.append(np.ascontiguousarray(variant))
    return out


def throughput(
    model,
    device: torch.device,
    images: list[np.ndarray],
    batches: list[int],
    modes: list[str],
    runs: int,
    prompt: str,
    fusion_chunks: Sequence[str] = ("auto",),
) -> list[dict]:
    from glip.api import Predictor
    from glip.modeling.fusion.bi_attention import BiMultiHeadAttention

    attentions = [m for m in model.modules() if isinstance(m, BiMultiHeadAttention)]
    rows = []
    for mode in ["fp32", *modes]:
        for batch in batches:
            predictor = Predictor(model, device=device, batch_size=batch, autocast=AUTOCAST.get(mode))
            inputs = [images[i % len(images)] for i in range(batch)]
            for chunk in fusion_chunks if batch > 1 else ["auto"]:
                for m in attentions:
                    m.images_per_chunk = None if chunk == "auto" else int(chunk)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                with _exact_float32() if mode == "fp32" else contextlib.nullcontext():
                    times = _median_time(
                        lambda p=predictor, x=inputs: p.predict(x, prompt, threshold=0.5), device, runs
                    )
                row = {
                    "mode": mode,
                    "batch": batch,
                    "fusion_chunk": chunk,
                    "calls_s": [round(t, 4) for t in times],
                    "images_per_s": batch / statistics.median(times),
                    "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
                }
                rows.append(row)
                print(
                    f"throughput {mode:<4} batch {batch:2d} fusion chunk {chunk:>4}: {row['images_per_s']:8.2f} "
                    f"images/s (calls {row['calls_s']})"
                    + (f", peak GPU memory {row['peak_gpu_mib']:.0f} MiB" if row["peak_gpu_mib"] else ""),
                    flush=True,
                )
    for m in attentions:
        m.images_per_chunk = None
    for mode in ["fp32", *modes]:
        one = next((r for r in rows if r["mode"] == mode and r["batch"] == 1), None)
        for r in rows:
            if one and r["mode"] == mode and r["batch"] > 1:
                r["speedup_vs_batch1"] = r["images_per_s"] / one["images_per_s"]
                print(
                    f"  {mode} batch {r['batch']} (fusion chunk {r['fusion_chunk']}) vs 1: "
                    f"{r['speedup_vs_batch1']:.2f}x images/s",
                    flush=True,
                )
    return rows


def compare(reference, other, top: int = 90) -> dict:
    """Each of the first ``top`` reference detections against its twin in ``other`` (same
    label, best IoU): score and box differences; whether the top phrase agrees."""
    from glip.ops.boxes import box_iou

    top = min(top, len(reference))
    if top == 0 or len(other) == 0:
        return {"matched": 0}
    iou = box_iou(reference.boxes[:top], other.boxes)
    iou[reference.labels[:top, None] != other.labels[None, :]] = -1
    best = iou.argmax(1)
    found = iou.max(1).values >= 0
    score = (other.scores[best] - reference.scores[:top]).abs()[found]
    box = (other.boxes[best] - reference.boxes[:top]).abs().amax(1)[found]
    return {
        "matched": int(found.sum()),
        "of": top,
        "score_max": float(score.max()),
        "score_median": float(score.median()),
        "box_px_median": float(box.median()),
        "box_px_max": float(box.max()),
        "top_phrase_agrees": bool(reference.phrases[:1] == other.phrases[:1]),
    }


def parity(model, device: torch.device, images: list[np.ndarray], modes: list[str], prompt: str) -> list[dict]:
    from glip.api import Predictor

    with _exact_float32():
        reference = Predictor(model, device=device, batch_size=1).predict(images, prompt, threshold=0.0)
    rows = []
    for mode in modes:
        other = Predictor(model, device=device, batch_size=1, autocast=AUTOCAST[mode]).predict(
            images, prompt, threshold=0.0
        )
        per_image = [compare(a, b) for a, b in zip(reference, other)]
        row = {"mode": mode, "against": "float32", "images": per_image}
        rows.append(row)
        for i, r in enumerate(per_image):
            print(f"parity {mode} vs float32, image {i}: {_fmt(r)}", flush=True)
    return rows


def _fmt(r: dict) -> str:
    if not r.get("matched"):
        return "no detections"
    return (
        f"{r['matched']}/{r['of']} matched, score max {r['score_max']:.2e} median {r['score_median']:.2e}, "
        f"box median {r['box_px_median']:.4f} px max {r['box_px_max']:.3f} px, top phrase agrees {r['top_phrase_agrees']}"
    )


def parity_official(fixtures: Path, device: torch.device, modes: list[str]) -> list[dict]:
    """Each tiny official model and case, float32 and autocast, against the official output."""
    from glip.hub.loading import load_model
    from glip.structures import Detections, ImageBatch
    from glip.text import BUNDLED_TEXT_ENCODERS, Prompt

    rows = []
    for folder in sorted((fixtures / "official").glob("tiny_*")):
        text_encoder = Path("/tmp") / f"bench_gpu_te_{folder.name}"
        text_encoder.mkdir(parents=True, exist_ok=True)
        (text_encoder / "config.json").write_bytes((folder / "bert_config.json").read_bytes())
        for name in ("vocab.txt", "tokenizer_config.json"):
            (text_encoder / name).write_bytes((BUNDLED_TEXT_ENCODERS["bert-base-uncased"] / name).read_bytes())
        model = load_model(
            folder / "model_official.pth", folder / "config.yaml", text_encoder=text_encoder, device=device
        )
        for case_file in sorted(folder.glob("case_*.pth")):
            c = torch.load(case_file, weights_only=True)
            images = ImageBatch(c["image_tensor"], [tuple(s) for s in c["image_sizes_field_hw"]])
            tokens = model.tokenize(Prompt.from_spans(c["caption"], c["tokens_positive_char_spans"]))
            ref = c["predictions"]["gpu_ml_nms_emulated"]["final_resized_image_coords"]
            order = ref["fields"]["scores"].argsort(descending=True)
            labels = ref["fields"]["labels"][order]
            official = Detections(
                ref["bbox"][order], ref["fields"]["scores"][order], labels, [str(int(i)) for i in labels], (0, 0)
            )
            for mode in ["fp32", *modes]:
                with _exact_float32() if mode == "fp32" else contextlib.nullcontext():
                    (det,) = model.detect(images, tokens, autocast=AUTOCAST.get(mode))
                det.phrases = [str(int(i)) for i in det.labels]
                r = compare(official, det)
                rows.append({"model": folder.name, "case": case_file.stem[5:], "mode": mode, **r})
                print(f"official parity {folder.name} {case_file.stem[5:]} {mode}: {_fmt(r)}", flush=True)
    return rows


def _levels(size: tuple[int, int]) -> list[tuple[int, int]]:
    h, w = size
    out = []
    for stride in (8, 16, 32, 64, 128):
        out.append((-(-h // stride), -(-w // stride)))
    return out


def attention(device: torch.device, size: tuple[int, int], peak: dict, runs: int = 20) -> list[dict]:
    """The fusion attention and block at GLIP-T widths under bf16 autocast: FLOPs, time, rate."""
    from torch.utils.flop_counter import FlopCounterMode

    from glip.modeling.fusion.bi_attention import BiAttentionBlock

    torch.manual_seed(0)
    block = BiAttentionBlock(256, 768).to(device).eval()
    levels = [torch.randn(1, 256, h, w, device=device) for h, w in _levels(size)]
    n = sum(h * w for h, w in _levels(size))
    v = torch.randn(1, n, 256, device=device)  # [1, N, C], the flattened levels
    rows = []
    measured, sheet = peak["measured_tflops"], peak["datasheet_tflops"]
    for width in (256, 16):
        t = torch.randn(1, width, 768, device=device)
        mask = torch.zeros(1, width, dtype=torch.int64, device=device)
        mask[:, :12] = 1
        for what, fn in (
            ("attention", lambda t=t, m=mask: block.attn(v, t, m)),
            ("block", lambda t=t, m=mask: block(levels, t, m)),
        ):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                counter = FlopCounterMode(display=False)
                with counter:
                    fn()
                flops = counter.get_total_flops()
                times = _median_time(fn, device, runs)
            seconds = statistics.median(times)
            tflops = flops / seconds / 1e12
            row = {
                "what": what,
                "pixels": n,
                "tokens": width,
                "gflop": flops / 1e9,
                "median_ms": seconds * 1e3,
                "tflops": tflops,
                "fraction_of_measured_peak": tflops / measured,
                "fraction_of_datasheet_peak": tflops / sheet if sheet else None,
            }
            rows.append(row)
            print(
                f"fusion {what:<9} N={n} T={width:3d}: {row['gflop']:8.2f} GFLOP in {row['median_ms']:8.3f} ms = "
                f"{tflops:7.2f} TFLOP/s, {100 * row['fraction_of_measured_peak']:.1f} % of the measured bf16 rate"
                + (f", {100 * row['fraction_of_datasheet_peak']:.1f} % of the datasheet's" if sheet else ""),
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", help="a zoo name or folder (default: a random-init GLIP-T)")
    parser.add_argument("--prompt", default=CAPTION, help=f"default {CAPTION!r}")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize the bench image first")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--autocast", nargs="+", default=["bf16"], choices=sorted(AUTOCAST))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--fusion-chunk",
        nargs="+",
        default=["auto", "1"],
        help="images per fusion-attention call for batches above 1: auto (BiMultiHeadAttention's default) or a number",
    )
    parser.add_argument("--images", type=int, default=3, help="images of the parity check (default 3)")
    parser.add_argument("--attention-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--peak-n", type=int, default=8192)
    parser.add_argument("--peak-tflops", type=float, help="the datasheet's dense bf16 rate, when not known")
    parser.add_argument("--fixtures", type=Path, help="the official golden folder (holding official/tiny_*)")
    parser.add_argument("--skip", nargs="+", default=[], choices=["throughput", "parity", "attention"])
    parser.add_argument("--out", type=Path, help="also write the results here (json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; --device cpu runs the smoke version")
    if any(b < 1 for b in args.batch):
        parser.error("--batch sizes must be at least 1")
    if any(c != "auto" and not (c.isdigit() and int(c) >= 1) for c in args.fusion_chunk):
        parser.error("--fusion-chunk takes auto or a whole number of images, at least 1")
    from glip.ops import active_backends

    peak = measure_peak(device, args.peak_n)
    if args.peak_tflops:
        peak["datasheet_tflops"] = args.peak_tflops
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__} | {name} | backends {active_backends(device)} | measured bf16 matrix rate "
        f"{peak['measured_tflops']:.1f} TFLOP/s (n={args.peak_n})"
        + (f", datasheet {peak['datasheet_tflops']:.0f}" if peak["datasheet_tflops"] else ""),
        flush=True,
    )
    result: dict = {"device": name, "torch": torch.__version__, "backends": active_backends(device), "peak": peak}
    if "throughput" not in args.skip or "parity" not in args.skip:
        torch.manual_seed(0)
        if args.model:
            from glip.hub.loading import load_model

            model = load_model(args.model, device=device)
        else:
            model = _build_glip().to(device)
        images = _images(tuple(args.size) if args.size else None, max(args.images, 1))
        if "throughput" not in args.skip:
            result["throughput"] = throughput(
                model, device, images, args.batch, args.autocast, args.runs, args.prompt, args.fusion_chunk
            )
        if "parity" not in args.skip:
            result["parity"] = parity(model, device, images[: args.images], args.autocast, args.prompt)
        del model
    if args.fixtures is not None:
        result["parity_official"] = parity_official(args.fixtures, device, args.autocast)
    if "attention" not in args.skip:
        result["attention"] = attention(device, tuple(args.attention_size), peak)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
