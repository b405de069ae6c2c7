"""Train a tiny open_clip CLIP for the synthetic shapes: the CLIP teacher of the offline
self-training and distillation runs (``scripts/self_training.py --clip-model``).

    python scripts/train_shapes_clip.py --work runs/shapes-clip          # ~3 min on 2 CPU threads

The stand-in for CLIP's web pre-training, as ``scripts/train_demo.py``'s visual pre-training
stands in for ImageNet: crops of the shapes of another synthetic set (``--seed`` 7; the
self-training set is seed 1, the demo's seed 0), each paired with the text
``"a photo of a <colour> <shape>."``, trained with CLIP's image-to-text contrastive loss
over the distinct texts of each batch. Crops are jittered (each side moved by up to
``--jitter`` of the box) so that imperfect detector boxes still score. Regions that are no
shape (random crops away from every shape) are paired with ``"a photo of background."``.

Writes ``WORK/clip`` in open_clip's local format (``open_clip_config.json`` +
``open_clip_model.safetensors``), which ``glip pseudo-label --teacher clip --clip-model
WORK/clip`` reads, and prints the zero-shot accuracy of :class:`glip.tools.clip_teacher.ClipScorer`
over the 16 names (and background) on the validation crops.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
BACKGROUND = "background"
TEMPLATE = "a photo of {}."
# 32-px crops, 8-px patches: a 2-layer ViT and a 2-layer text transformer (3.7M parameters,
# most in open_clip's 49408-token embedding).
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/shapes-clip", help="data and the model (WORK/clip)")
    p.add_argument("--num-train", type=int, default=2000, help="images whose shapes are cropped (2000)")
    p.add_argument("--num-val", type=int, default=100, help="validation images (100)")
    p.add_argument("--seed", type=int, default=7, help="data and training seed (7)")
    p.add_argument("--epochs", type=int, default=6, help="passes over the crops (6)")
    p.add_argument("--batch", type=int, default=128, help="crops per step (128)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine decay (1e-3)")
    p.add_argument("--jitter", type=float, default=0.15, help="each crop side moved by up to this x the box (0.15)")
    return p.parse_args(argv)


def crops_of(json_path: Path, image_dir: Path, rng: np.random.RandomState, jitter: float) -> tuple[list, list[str]]:
    """Jittered crops of every shape (and one background crop per image) with their names."""
    from PIL import Image

    from glip.tools.clip_teacher import crop

    data = json.loads(json_path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    crops, labels = [], []
    for im in data["images"]:
        image = np.asarray(Image.open(image_dir / im["file_name"]).convert("RGB"))
        height, width = image.shape[:2]
        boxes = []
        for a in by_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            dx0, dy0, dx1, dy1 = rng.uniform(-jitter, jitter, size=4) * [w, h, w, h]
            box = (x + dx0, y + dy0, x + w - 1 + dx1, y + h - 1 + dy1)
            if (c := crop(image, box)) is not None:
                crops.append(c)
                labels.append(names[a["category_id"]])
            boxes.append((x, y, x + w, y + h))
        for _ in range(10):  # a region overlapping no shape by more than a tenth of its area
            w, h = rng.randint(12, max(13, width // 3)), rng.randint(12, max(13, height // 3))
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            inter = [max(0, min(x + w, b[2]) - max(x, b[0])) * max(0, min(y + h, b[3]) - max(y, b[1])) for b in boxes]
            if max(inter, default=0) <= 0.1 * w * h:
                crops.append(image[y : y + h, x : x + w])
                labels.append(BACKGROUND)
                break
    return crops, labels


def pixels_of(crops: list, side: int) -> torch.Tensor:
    """Crops as ClipScorer feeds them: bicubic to ``side`` squared, normalised."""
    from PIL import Image

    arrays = [np.asarray(Image.fromarray(c).resize((side, side), Image.BICUBIC)) for c in crops]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, S, S]
    mean, std = (torch.tensor(PREPROCESS[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    import open_clip
    from safetensors.torch import save_file
    from tqdm import tqdm

    from glip.data import generate_synthetic
    from glip.tools.clip_teacher import ClipScorer

    args = parse_args(argv)
    work = Path(args.work)
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    ds = generate_synthetic(work / "data", num_train=args.num_train, num_val=args.num_val, image_size=(128, 192),
                            seed=args.seed)  # fmt: skip
    crops, labels = crops_of(ds.train_json, ds.image_dir, rng, args.jitter)
    texts = sorted(set(labels))
    pixels = pixels_of(crops, MODEL_CFG["vision_cfg"]["image_size"])  # [N, 3, 32, 32]
    targets = torch.tensor([texts.index(n) for n in labels])
    print(f"{len(crops)} crops, {len(texts)} texts ({sum(n == BACKGROUND for n in labels)} background)")

    out = work / "clip"
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS}))
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # open_clip warns that a fresh model has no weights
    try:
        model = open_clip.create_model(f"local-dir:{out}", load_weights=False)
    finally:
        root.setLevel(level)  # the caller's level, not a fixed WARNING
    tokens = open_clip.get_tokenizer(f"local-dir:{out}")([TEMPLATE.format(t) for t in texts])  # [T, 16]
    steps = args.epochs * math.ceil(len(crops) / args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.1)
    model.train()
    bar = tqdm(total=steps, desc="clip")
    for _ in range(args.epochs):
        for idx in torch.randperm(len(crops)).split(args.batch):
            present = targets[idx].unique()  # the batch's distinct texts
            image = torch.nn.functional.normalize(model.encode_image(pixels[idx]), dim=-1)  # [B, D]
            text = torch.nn.functional.normalize(model.encode_text(tokens[present]), dim=-1)  # [T', D]
            logits = model.logit_scale.exp() * image @ text.T  # [B, T']
            loss = torch.nn.functional.cross_entropy(logits, torch.searchsorted(present, targets[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")

    scorer = ClipScorer.load(out)
    val_crops, val_labels = crops_of(ds.val_json, ds.image_dir, np.random.RandomState(0), 0.0)
    text_emb = scorer.embed_texts([TEMPLATE.format(t) for t in texts])  # [T, D]
    guess = (scorer.embed_crops(val_crops) @ text_emb.T).argmax(dim=1)
    right = [texts[int(g)] == n for g, n in zip(guess, val_labels)]
    shapes = [r for r, n in zip(right, val_labels) if n != BACKGROUND]
    print(f"zero-shot on {len(val_crops)} validation crops: {100 * np.mean(right):.1f} % right "
          f"({100 * np.mean(shapes):.1f} % of the {len(shapes)} shapes; chance {100 / len(texts):.1f} %); "
          f"logit scale {scorer.logit_scale:.1f}")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
