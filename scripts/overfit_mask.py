"""Overfit the VL mask head on one synthetic image: each shape's mask IoU must pass 0.9.

    python scripts/overfit_mask.py [--steps 300] [--seed 0]

One image of coloured shapes (``generate_synthetic``, exact polygon masks) is loaded
through ``CocoGroundingDataset(masks=True)`` and run once through a tiny GLIP (the golden
test's architecture, random weights, ``model.heads.mask.enabled``). The mask head then
trains alone on those post-fusion maps and text (``--full`` trains the whole model with
the full criterion instead: far slower on a CPU) with its own loss: proposals = the
detector's boxes + the ground truth, batched as in training. Every ``--eval-every``
steps each ground-truth box is segmented by the head (its phrase's tokens, pasted at
threshold 0.5) and compared with its mask. Exit status 0 when every shape passes
``--target`` (0.9). ``tests/modeling/test_mask_overfit.py`` runs :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IMAGE_SIZE = 128
SHAPES = ("circle", "square", "triangle", "diamond", "star")


def build(seed: int):
    """The tiny mask model, its training sample (one image) and the prompt tokens."""
    from transformers import BertConfig

    from glip.config import load_config
    from glip.data import CocoGroundingDataset, TrainTransform, generate_synthetic
    from glip.data.od_to_grounding import CaptionRecipe, SampleRNG
    from glip.modeling.build import build_model
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer
    from tests.golden.case import _TINY_BERT, CONFIG_FILE

    work = Path(tempfile.mkdtemp(prefix="overfit_mask_"))
    data = generate_synthetic(
        work, num_train=1, num_val=0, image_size=IMAGE_SIZE, seed=seed, shapes=SHAPES, max_objects=4
    )
    cfg = load_config(
        CONFIG_FILE,
        [
            "model.heads.mask.enabled=true",
            f"input.min_size_test={IMAGE_SIZE}",
            f"input.max_size_test={IMAGE_SIZE}",
            "model.text.max_query_len=64",  # every category name fits (the tiny BERT has 64 positions)
        ],
    )
    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    torch.manual_seed(seed)
    model = build_model(cfg, BertConfig(**_TINY_BERT), tokenizer)
    dataset = CocoGroundingDataset(
        data.train_json,
        data.image_dir,
        tokenizer,
        TrainTransform([IMAGE_SIZE], IMAGE_SIZE, flip_prob=0.0),
        recipe=CaptionRecipe.coco_finetune(),
        max_query_len=64,
        masks=True,
    )
    sample = dataset.load(0, SampleRNG.from_seed(seed))
    return cfg, model, sample


def mask_ious(model, sample, batch) -> list[float]:
    """Each ground-truth box segmented by the head (its phrase's tokens), IoU with its mask."""
    from glip.ops.masks import box_extent, mask_iou, paste_masks

    t = sample.targets
    model.eval()
    with torch.no_grad():
        out = model(batch.images, batch.input_ids, batch.attention_mask)
        (probs,) = model.heads["mask"].postprocess(out.heads["mask"], [t.boxes], [t.positive_map]).probs
    model.train()
    pasted = paste_masks(probs, box_extent(t.boxes), sample.image_size)
    return mask_iou(pasted, t.masks).tolist()


def head_ious(head, output, sample) -> list[float]:
    """:func:`mask_ious` on a fixed trunk output (the head alone)."""
    from glip.ops.masks import box_extent, mask_iou, paste_masks

    t = sample.targets
    (probs,) = head.postprocess(output, [t.boxes], [t.positive_map]).probs
    return mask_iou(paste_masks(probs, box_extent(t.boxes), sample.image_size), t.masks).tolist()


def run(
    steps: int = 300,
    seed: int = 0,
    lr: float = 1e-3,
    eval_every: int = 25,
    target: float = 0.9,
    full: bool = False,
    verbose: bool = True,
) -> list[float]:
    """Trains and returns the last per-shape IoUs (stopping early once all pass ``target``)."""
    from glip.data import collate_grounding
    from glip.modeling.build import build_loss

    cfg, model, sample = build(seed)
    batch = collate_grounding([sample], 32, 64)
    criterion = build_loss(cfg)
    head = model.heads["mask"]
    if full:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        model.eval()
        with torch.no_grad():  # the trunk's maps and text, and the shared loss inputs, once
            fixed = model(batch.images, batch.input_ids, batch.attention_mask)
            inputs = criterion.prepare(
                fixed.anchors, batch.attention_mask, batch.targets, trunk=fixed.trunk, outputs=fixed.heads
            )
        params = list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    names = [sample.caption[a:b] for ((a, b),) in sample.tokens_positive]
    start = time.time()
    ious: list[float] = []
    for step in range(1, steps + 1):
        if full:
            out = model(batch.images, batch.input_ids, batch.attention_mask)
            losses = criterion(model.heads, out, batch.attention_mask, batch.targets)
        else:
            losses = head.loss(fixed.heads["mask"], inputs)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            ious = mask_ious(model, sample, batch) if full else head_ious(head, fixed.heads["mask"], sample)
            if not verbose:
                if min(ious) > target:
                    break
                continue
            shown = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, ious))
            print(
                f"step {step:4d}  loss_mask {float(losses['loss_mask']):.4f}  total {float(total):.3f}  "
                f"IoU: {shown}  ({time.time() - start:.0f} s)",
                flush=True,
            )
            if min(ious) > target:
                break
    return ious


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--full", action="store_true", help="train the whole model, not the mask head alone")
    args = parser.parse_args(argv)
    ious = run(args.steps, args.seed, args.lr, args.eval_every, args.target, args.full)
    ok = bool(ious) and min(ious) > args.target
    print(("PASS" if ok else "FAIL") + f": min mask IoU {min(ious):.3f} (target {args.target})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
