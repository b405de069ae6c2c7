"""Per-op CPU timings behind the backend and fusion choices (median of 3 after a warm-up).

* modulated deformable conv, pure PyTorch vs torchvision's kernel, on the largest GLIP-T head
  map ``[1, 256, 100, 152]`` (800x1216 input, stride 8) and a small ``[1, 64, 25, 38]``;
* NMS, pure vs torchvision, on 100 / 1000 / 4000 random boxes;
* one fusion block (BiMultiHeadAttention at GLIP-T widths: C 256, D 768, E 2048, 8 heads) over
  the five levels of an 800x1216 input (N = 20267 pixels), in the official order of products
  (``_forward_projected``) and re-associated (``_forward_reassociated``, the inference path),
  at the padded T = 256 and a trimmed T = 16 (12 real tokens); and at inference over a batch
  of 4 images, one image per call (the CPU default) against all 4 in one call
  (``BiMultiHeadAttention.images_per_chunk``).

    python scripts/bench_ops.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _median(fn, runs: int = 3) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from glip.modeling.fusion.bi_attention import BiAttentionBlock
    from glip.ops.backend import torchvision_available
    from glip.ops.deform_conv import modulated_deform_conv2d
    from glip.ops.nms import nms

    backends = ["torch", "torchvision"] if torchvision_available() else ["torch"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), backends {backends}")
    with torch.no_grad():
        for shape in [(1, 256, 100, 152), (1, 64, 25, 38)]:
            b, c, h, w = shape
            x, offset = torch.randn(shape), torch.randn(b, 18, h, w) * 2
            mask, weight, bias = torch.rand(b, 9, h, w), torch.randn(c, c, 3, 3) * 0.05, torch.randn(c)
            inputs = (x, offset, mask, weight, bias)
            for be in backends:
                s = _median(lambda be=be, a=inputs: modulated_deform_conv2d(*a, backend=be))
                print(f"deform_conv2d {list(shape)} {be:<11} {s * 1e3:9.1f} ms", flush=True)

        g = torch.Generator().manual_seed(0)
        for n in (100, 1000, 4000):
            xy, wh = torch.rand(n, 2, generator=g) * 800, torch.rand(n, 2, generator=g) * 100 + 5
            boxes, scores = torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)
            for be in backends:
                s = _median(lambda be=be, bx=boxes, sc=scores: nms(bx, sc, 0.6, backend=be))
                print(f"nms {n:5d} boxes {be:<11} {s * 1e3:9.2f} ms", flush=True)

        block = BiAttentionBlock(256, 768).eval()
        levels = [torch.randn(1, 256, h, w) for h, w in [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]]
        v = block.norm_v(torch.cat([f.flatten(2).transpose(1, 2) for f in levels], 1))  # [1, N, C]
        for width in (256, 16):
            t = torch.randn(1, width, 768)
            text_mask = torch.zeros(1, width, dtype=torch.int64)
            text_mask[:, :12] = 1
            for name in ("_forward_projected", "_forward_reassociated"):
                fn = getattr(block.attn, name)
                s = _median(lambda fn=fn, t=t, m=text_mask: fn(v, t, m))
                print(f"fusion attention T={width:3d} {name[9:]:<13} {s * 1e3:9.1f} ms", flush=True)
            s = _median(lambda t=t, m=text_mask: block(levels, t, m))
            print(f"fusion block (inference) T={width:3d} {s * 1e3:9.1f} ms", flush=True)
        v4 = v.expand(4, -1, -1).contiguous()  # [4, N, C]
        for width in (256, 16):
            t = torch.randn(4, width, 768)
            text_mask = torch.zeros(4, width, dtype=torch.int64)
            text_mask[:, :12] = 1
            for chunk in (1, 4):
                block.attn.images_per_chunk = chunk
                s = _median(lambda t=t, m=text_mask: block.attn(v4, t, m))
                print(f"fusion attention batch 4 T={width:3d} {chunk} image(s) per call {s * 1e3:9.1f} ms", flush=True)
        block.attn.images_per_chunk = None


if __name__ == "__main__":
    main()
