"""Overfit the captioning head on one synthetic image: greedy decoding must give its caption.

    python scripts/overfit_caption.py [--steps 150] [--lr 3e-3] [--seed 0]

One image of ``generate_synthetic`` (and its ``captions_train.json`` sentence) is loaded
through ``CaptionDataset``; a tiny GLIP (the golden test's architecture without deformable
convs, random weights, ``model.heads.caption.enabled``) trains on it through the training
loop's own path (:class:`glip.engine.loss_model.LossModel`, the caption head's causal batches): causal trunk,
one masked token per copy of the caption (``mask_prob`` 0, ``max_masked`` 1: the prefix is
clean, as at decoding), a batch of copies with different masks. The backbone is frozen
and its maps computed once (the trunk and text encoder train). Every ``--eval-every``
steps the image is captioned greedily. Exit status 0 when the caption is exact.
``tests/engine/test_caption_training.py`` runs :func:`run` (marked slow).
"""

from __future__ import annotations

import argparse
import json
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

IMAGE_SIZE = 64


def run(steps: int = 150, lr: float = 3e-3, seed: int = 0, batch: int = 6, eval_every: int = 25,
        verbose: bool = True) -> tuple[str, str]:  # fmt: skip
    """Trains and returns ``(expected caption, generated caption)``."""
    from transformers import BertConfig

    from glip.config import load_config
    from glip.data import GroundingCollator, generate_synthetic
    from glip.data.captions import CaptionDataset
    from glip.data.transforms import build_train_transform
    from glip.engine.loss_model import LossModel
    from glip.modeling.build import build_loss, build_model
    from glip.modeling.caption_decoding import greedy_decode
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer
    from tests.golden import case

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthetic(tmp, num_train=1, num_val=1, image_size=IMAGE_SIZE, seed=seed, max_objects=2)
        size = [f"input.{k}={v}" for k, v in (("min_size_train", f"[{IMAGE_SIZE}]"), ("max_size_train", IMAGE_SIZE),
                                              ("min_size_test", IMAGE_SIZE), ("max_size_test", IMAGE_SIZE))]  # fmt: skip
        cfg = load_config(case.CONFIG_FILE, [
            "model.heads.caption.enabled=true", "model.trunk.use_dfconv=false", "model.text.max_query_len=24",
            "model.heads.caption.mask_prob=0.0", "model.heads.caption.max_masked=1", *size,
        ])  # fmt: skip
        tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
        model = build_model(cfg, BertConfig(**case._TINY_BERT), tokenizer)
        data = CaptionDataset(
            Path(tmp) / "captions_train.json", Path(tmp) / "images", tokenizer,
            build_train_transform(cfg.input, 0.0, True), cfg.model.text.max_query_len, seed,
        )  # fmt: skip
        expected = data.data.captions[data.ids[0]][0]
        samples = [data[0] for _ in range(batch)]
        for i, s in enumerate(samples):
            s.index = i  # each copy masks its own token
        batch_data = GroundingCollator(32, cfg.model.text.max_query_len, tokenizer.pad_token_id)(samples)
    model.backbone.requires_grad_(False)
    with torch.no_grad():
        features = model.backbone(batch_data.images.tensor)
    model.backbone.forward = lambda _: features  # type: ignore[method-assign]  # maps computed once
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = LossModel(model, build_loss(cfg), seed)
    generated, start = "", time.time()
    for step in range(steps):
        model.train()
        loss = losses(batch_data, step)["loss_caption"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % eval_every == 0 or step == steps - 1:
            model.eval()
            out = greedy_decode(model, [f[:1] for f in features], max_length=16)
            generated = tokenizer.decode(out.token_ids, skip_special_tokens=True)
            if verbose:
                print(f"step {step + 1}: loss {loss.item():.3f} caption {generated!r} ({time.time() - start:.0f} s)")
            if generated == expected:
                break
    return expected, generated


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--eval-every", type=int, default=25)
    args = p.parse_args()
    expected, generated = run(args.steps, args.lr, args.seed, args.batch, args.eval_every)
    print(json.dumps({"expected": expected, "generated": generated, "exact": expected == generated}))
    return 0 if expected == generated else 1


if __name__ == "__main__":
    sys.exit(main())
