"""Train the bundled demo model (a small GLIP) on synthetic shapes on the CPU, evaluate it,
save it as a zoo folder.

    python scripts/train_demo.py --work runs/demo --out glip/assets/demo-shapes

1. ``generate_synthetic``: coloured shapes, three colour-shape combinations held out of
   the grounding data (they appear only in validation: the detector is trained on "red"
   and on "triangle", never on "red triangle").
2. Visual pre-training (``--backbone-steps``, ``--tower-steps``; the stand-in for GLIP's
   ImageNet-pretrained Swin): :func:`pretrain_backbone` trains the backbone and FPN, then
   the trunk's DyConv tower on top of them, as a dense colour/shape labeller on 2000 other
   synthetic images. Its labels are per attribute, so it sees every combination
   (``--pretrain-held-out``, on by default): what red and what a triangle look like, never
   the phrase "red triangle".
3. Grounding: ``glip.engine.train`` with ``configs/synthetic/tiny.yaml`` and
   :data:`DEMO_RECIPE` (backbone and FPN frozen, the fusion's text side frozen, the tower at
   a tenth of the base rate, word-disjoint negatives), one process; ``--probe-every``
   prints the top-phrase / colour-word / shape-word accuracy on one-shape images.
4. ``--mask-steps``: the mask head alone (``train.tuning=mask``), the detector unchanged.
5. COCO box (and mask) AP / AP50 (pycocotools) on the validation images, every category
   name prompted, for all, seen and held-out categories; and, on fresh one-shape images
   (another seed), how often the top-scoring phrase is the shape's name (chance 1/16).
6. ``save_model`` in fp16 with the text encoder referenced, not copied; the recipe's
   training switches are reset to tiny.yaml's in the saved config.

Why the tower is pre-trained: trained from scratch inside GLIP it drops colour (the four
colour words sit close together in the frozen MiniLM, so the early token loss pulls the
tower toward shape and objectness), and the colour word is then read on ~50 % of one-shape
images at best. ``--backbone-steps 0`` trains tiny.yaml from scratch instead (the model
bundled before 2026-11-30: box AP50 24.6, top phrase right on 31 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]


# The demo's synthetic set (with train_demo.py's defaults --num-train, --num-val, --held-out):
# train_demo_vl.py regenerates the same images from it.
DEMO_DATA = {"num_train": 2000, "num_val": 80, "image_size": (128, 192), "held_out": 3}


def evaluate(
    model, val_json: Path, image_dir: Path, held_out: set[str], masks: bool = False
) -> dict[str, dict[str, float]]:
    """COCO box AP / AP50 (pycocotools, through glip.evaluation) on the validation images,
    prompting with every category name; for all, seen and held-out categories; with
    ``masks`` also mask AP / AP50 (``segm_AP``, ``segm_AP50``)."""
    from glip.evaluation.coco import evaluate_coco

    data = json.loads(val_json.read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    ids = [c["id"] for c in categories]
    results = []
    for record in data["images"]:
        det = model.predict(image_dir / record["file_name"], names, threshold=0.0, masks=masks)
        results.extend(det.to_coco(record["id"], category_ids=ids))
    rows = {}
    present = {a["category_id"] for a in data["annotations"]}
    for split, keep in (
        ("all", lambda n: True),
        ("seen", lambda n: n not in held_out),
        ("held-out", lambda n: n in held_out),
    ):
        cats = [i for i, n in zip(ids, names) if keep(n) and i in present]
        if cats:
            m = evaluate_coco(data, results, category_ids=cats)
            rows[split] = {"AP": 100 * m["AP"], "AP50": 100 * m["AP50"], "categories": len(cats)}
            if masks:
                m = evaluate_coco(data, results, category_ids=cats, iou_type="segm")
                rows[split].update(segm_AP=100 * m["AP"], segm_AP50=100 * m["AP50"])
    return rows


def phrase_accuracy(model, out_dir: Path, num_images: int = 64, seed: int = 777) -> dict[str, float]:
    """On fresh one-shape images, all 16 names prompted: how often the top-scoring phrase is
    the shape's own name (``top1``), and how often its colour word and its shape word are
    right (``colour``, ``shape``)."""
    from glip.data import generate_synthetic, synthetic_categories

    ds = generate_synthetic(out_dir, num_train=0, num_val=num_images, image_size=(128, 192), seed=seed, max_objects=1)
    data = json.loads(ds.val_json.read_text())
    truth = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    prompt = synthetic_categories()
    hits = {"top1": 0, "colour": 0, "shape": 0}
    total = 0
    for record in data["images"]:
        if record["id"] not in truth:
            continue
        det = model.predict(ds.image_dir / record["file_name"], prompt, threshold=0.0)
        total += 1
        if not len(det.phrases):
            continue
        (colour, shape), (true_colour, true_shape) = det.phrases[0].split(), names[truth[record["id"]]].split()
        hits["top1"] += colour == true_colour and shape == true_shape
        hits["colour"] += colour == true_colour
        hits["shape"] += shape == true_shape
    return {k: v / max(total, 1) for k, v in hits.items()}


def top_phrase_accuracy(model, out_dir: Path, num_images: int = 64, seed: int = 777) -> float:
    """Fraction of fresh one-shape images whose top-scoring phrase is the shape's own name."""
    return phrase_accuracy(model, out_dir, num_images, seed)["top1"]


def probe_evaluator(out_dir: Path, num_images: int = 32):
    """An in-training evaluator: :func:`phrase_accuracy` on ``num_images`` one-shape images
    (another seed than the final report's), printed and logged as ``probe/*``."""

    def evaluate_probe(model, step: int) -> dict[str, float]:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                acc = phrase_accuracy(model, out_dir, num_images, seed=778)
        finally:
            model.train(was)
        print(f"step {step}: top phrase {100 * acc['top1']:.0f}% (colour {100 * acc['colour']:.0f}%, "
              f"shape {100 * acc['shape']:.0f}%) on {num_images} one-shape images", flush=True)  # fmt: skip
        return {f"probe/{k}": v for k, v in acc.items()}

    return evaluate_probe


@dataclasses.dataclass
class DenseLabels:
    """Images and per-pixel labels for :func:`pretrain_backbone`: ``images``
    ``Tensor[N, 3, H, W]`` (normalised, zero-padded to multiples of 32), ``colour`` and
    ``shape`` ``Tensor[N, H, W]`` (0: background, ``i + 1``: ``colours[i]`` / ``shapes[i]``,
    -100: padding), and the prompt naming every category."""

    images: torch.Tensor
    colour: torch.Tensor
    shape: torch.Tensor
    colours: list[str]
    shapes: list[str]
    prompt: list[str]


def dense_labels(train_json: Path, image_dir: Path, preprocessing) -> DenseLabels:
    """Reads the images of ``train_json`` and paints each shape's colour and shape into
    per-pixel label maps (the exact polygons; later shapes on top)."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from glip.data.masks import annotation_mask
    from glip.utils.image import normalize_image

    data = json.loads(train_json.read_text())
    names = {c["id"]: c["name"].split() for c in data["categories"]}
    colours = sorted({colour for colour, _ in names.values()})
    shapes = sorted({shape for _, shape in names.values()})
    per_image: dict[int, list] = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    pre = preprocessing
    images, colour_maps, shape_maps = [], [], []
    for record in data["images"]:
        rgb = np.asarray(Image.open(image_dir / record["file_name"]).convert("RGB"))
        h, w = rgb.shape[:2]
        colour_map = torch.zeros(h, w, dtype=torch.long)  # 0: background, i + 1: colours[i]
        shape_map = torch.zeros(h, w, dtype=torch.long)
        for a in per_image.get(record["id"], []):  # in drawing order: later shapes on top
            inside = torch.from_numpy(annotation_mask(a, h, w))
            colour, shape = names[a["category_id"]]
            colour_map[inside], shape_map[inside] = colours.index(colour) + 1, shapes.index(shape) + 1
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0  # [3, h, w]
        images.append(normalize_image(x, pre.pixel_mean, pre.pixel_std, pre.to_bgr255))
        colour_maps.append(colour_map)
        shape_maps.append(shape_map)
    # One padded batch tensor (multiples of 32); padding is ignored by the loss (-100).
    H = -(-max(x.shape[1] for x in images) // 32) * 32
    W = -(-max(x.shape[2] for x in images) // 32) * 32

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(t, (0, W - t.shape[-1], 0, H - t.shape[-2]), value=value)

    return DenseLabels(
        images=torch.stack([pad(x, 0.0) for x in images]),  # [N, 3, H, W]
        colour=torch.stack([pad(c, -100) for c in colour_maps]),  # [N, H, W]
        shape=torch.stack([pad(m, -100) for m in shape_maps]),
        colours=colours,
        shapes=shapes,
        prompt=[" ".join(n) for n in names.values()],
    )


def pretrain_backbone(
    model,
    labels: DenseLabels,
    steps: int = 300,
    batch: int = 16,
    seed: int = 0,
    tower: bool = False,
    train_backbone: bool = True,
) -> dict[str, float]:
    """Pre-trains ``model.backbone`` (body and FPN) in place as a dense labeller of
    ``labels`` (:func:`dense_labels`): two 1x1 classifiers on P3-P5 name each location's
    colour and shape (background included), then are dropped. The stand-in for GLIP's
    ImageNet-pretrained Swin. ``tower``: the classifiers read the trunk's DyConv tower
    output instead (the trunk run with every category name as the prompt) and the tower's
    convolutions train too; ``train_backbone`` False keeps the backbone and FPN as they are.
    Returns the final per-location foreground accuracies (``colour``, ``shape``)."""
    import torch.nn.functional as F

    X, C, S = labels.images, labels.colour, labels.shape
    colours, shapes = labels.colours, labels.shapes
    backbone, levels = model.backbone, 3
    text = None
    if tower:  # the trunk runs on the prompt of every category name, as at inference
        tokens = model.tokenize(labels.prompt)
        with torch.no_grad():
            text = model.text_encoder(tokens.input_ids, tokens.attention_mask)

    def dense(x: torch.Tensor) -> list[torch.Tensor]:
        """The maps the classifiers read: FPN levels P3-P5, or the tower's output there."""
        with torch.set_grad_enabled(train_backbone and torch.is_grad_enabled()):
            features = backbone(x)
        if text is None:
            return features[:levels]
        return model.trunk(features, text.expand(x.shape[0])).visual[:levels]

    with torch.no_grad():
        width = dense(X[:1])[0].shape[1]
    kc, ks = len(colours) + 1, len(shapes) + 1  # classes with background
    classifiers = torch.nn.ModuleList(torch.nn.Conv2d(width, kc + ks, 1) for _ in range(levels))
    params = list(classifiers.parameters())
    if train_backbone:
        params += list(backbone.parameters())
    if tower:  # the DyConv tower; the fusion and in-head text layers keep their initial weights
        params += [p for block in model.trunk.blocks for p in block.dyconv.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    # background is most of the image
    colour_weight, shape_weight = (torch.tensor([0.2] + [1.0] * (k - 1)) for k in (kc, ks))
    generator = torch.Generator().manual_seed(seed)
    backbone.train(train_backbone)
    model.trunk.train()
    accuracy = {"colour": 0.0, "shape": 0.0}
    for step in range(steps):
        idx = torch.randint(len(X), (batch,), generator=generator)
        x, c, s = X[idx], C[idx], S[idx]
        if torch.rand(1, generator=generator).item() < 0.5:
            x, c, s = x.flip(-1), c.flip(-1), s.flip(-1)
        for group in optimizer.param_groups:  # linear warm-up, /10 for the last fifth
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 30) * (0.1 if step >= 0.8 * steps else 1.0)
        loss, hits = 0.0, {"colour": [], "shape": []}
        for level, (feature, classifier) in enumerate(zip(dense(x), classifiers)):
            stride = 8 * 2**level
            h, w = feature.shape[-2:]
            # the label at the centre of each cell: [B, h, w]
            cl = c[:, stride // 2 :: stride, stride // 2 :: stride][:, :h, :w]
            sl = s[:, stride // 2 :: stride, stride // 2 :: stride][:, :h, :w]
            logits = classifier(feature)  # [B, kc + ks, h, w]
            loss = loss + F.cross_entropy(logits[:, :kc], cl, weight=colour_weight)
            loss = loss + F.cross_entropy(logits[:, kc:], sl, weight=shape_weight)
            fg = cl > 0
            hits["colour"].append((logits[:, :kc].argmax(1) == cl)[fg].float().mean().item())
            hits["shape"].append((logits[:, kc:].argmax(1) == sl)[fg].float().mean().item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = {key: sum(v) / len(v) for key, v in hits.items()}
        if step % 50 == 0 or step == steps - 1:
            print(f"backbone pre-training step {step}: loss {loss.item():.3f}, foreground colour "
                  f"{100 * accuracy['colour']:.0f}%, shape {100 * accuracy['shape']:.0f}%", flush=True)  # fmt: skip
    return accuracy


# The GLIP stage of the demo recipe, over configs/synthetic/tiny.yaml, after the backbone
# pre-training: the pre-trained backbone and FPN frozen (as GLIP's linear-probe and prompt
# modes freeze theirs), the fusion's text side frozen and the tower's convolutions at a tenth
# of the base rate. Trained from scratch together on 400 images, the tower and the fusion
# learn "some object is here" within a few hundred steps and drop what tells colours and
# shapes apart; the words then have nothing to match.
DEMO_RECIPE = [
    "model.backbone.freeze=true",
    "model.backbone.freeze_fpn=true",
    "solver.fusion_lr_factor=0.0",
    "solver.tower_lr_factor=0.1",
    "data.disjoint_negatives=true",
    "solver.steps=[0.9]",
]


def train_masks(cfg, weights: Path, work: Path, ds, steps: int) -> tuple[Path, dict]:
    """Adds the mask head to the detector ``weights`` and trains it alone (``train.tuning=mask``:
    boxes unchanged) on the synthetic shapes' exact polygons; returns the folder and the box
    and mask AP on the validation images."""
    from glip.config import config_from_dict, config_to_dict
    from glip.engine import train
    from glip.hub.loading import load_model

    mask_cfg = config_from_dict(config_to_dict(cfg), [
        "train.tuning=mask", "model.heads.mask.enabled=true", f"solver.max_iter={steps}",
        f"solver.warmup_iters={max(steps // 10, 1)}", f"solver.checkpoint_period={max(steps // 2, 1)}",
        "train.eval_period=0",
    ])  # fmt: skip
    start = time.time()
    result = train(mask_cfg, work / "mask", resume=True, cpu=True, weights=weights)
    if result.interrupted_by is not None:
        raise SystemExit(f"interrupted at mask step {result.progress.step}; run again to resume")
    folder = work / "mask" / "model"
    table = evaluate(load_model(folder), ds.val_json, ds.image_dir, set(ds.held_out), masks=True)
    print(f"\nmask head: {steps} steps in {(time.time() - start) / 60:.1f} min")
    for split, row in table.items():
        print(
            f"  {split:<9} box AP50 {row['AP50']:5.1f}  mask AP {row['segm_AP']:5.1f}  mask AP50 {row['segm_AP50']:5.1f}"
        )
    return folder, table


def save_demo(model, out: str | Path) -> tuple[Path, int]:
    """Saves the demo as a zoo folder (fp16, the text encoder referenced) with the recipe's
    training switches reset to tiny.yaml's (fine-tuning the demo starts from tiny.yaml's
    settings, not from a frozen backbone and fusion); returns the folder and its bytes."""
    from glip.config import load_config
    from glip.hub.checkpoint import save_model

    base = load_config(REPO / "configs" / "synthetic" / "tiny.yaml")
    model.config.model.backbone.freeze = base.model.backbone.freeze
    model.config.model.backbone.freeze_fpn = base.model.backbone.freeze_fpn
    model.config.solver = base.solver
    model.config.data = base.data
    model.config.train = base.train
    folder = Path(save_model(model, out, dtype=torch.float16, include_text_encoder=False))
    return folder, sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/demo", help="data and training output")
    p.add_argument("--out", default=str(REPO / "glip" / "assets" / "demo-shapes"), help="zoo folder to write")
    p.add_argument("--num-train", type=int, default=DEMO_DATA["num_train"])
    p.add_argument("--num-val", type=int, default=DEMO_DATA["num_val"])
    p.add_argument("--held-out", type=int, default=DEMO_DATA["held_out"])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone-steps", type=int, default=1500,
                   help="steps of dense colour/shape pre-training of the backbone before GLIP training (0: none)")  # fmt: skip
    p.add_argument("--tower-steps", type=int, default=400,
                   help="then steps of the same labelling on the trunk's DyConv tower output, backbone frozen")  # fmt: skip
    p.add_argument("--pretrain-held-out", action=argparse.BooleanOptionalAction, default=True,
                   help="the dense colour/shape pre-training also sees the held-out combinations (labelled by "
                        "colour and shape separately); the grounding stage never does")  # fmt: skip
    p.add_argument("--backbone-images", type=int, default=2000,
                   help="images (another seed) of the visual pre-training")  # fmt: skip
    p.add_argument("--mask-steps", type=int, default=300,
                   help="steps of mask-head training (train.tuning=mask, the rest frozen) after detection (0: none)")  # fmt: skip
    p.add_argument("--probe-every", type=int, default=200, help="steps between phrase-accuracy probes (0: none)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()

    sys.path.insert(0, str(REPO))
    from glip.config import load_config
    from glip.data import generate_synthetic
    from glip.engine import train
    from glip.engine.run import build_training_model
    from glip.hub.checkpoint import save_model
    from glip.hub.loading import load_model

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    work = Path(args.work)
    ds = generate_synthetic(
        work / "data", num_train=args.num_train, num_val=args.num_val, image_size=DEMO_DATA["image_size"],
        seed=args.seed, held_out=args.held_out,
    )  # fmt: skip
    print("held-out categories:", ", ".join(ds.held_out))
    warmup = max(args.steps // 10, 1)
    recipe = DEMO_RECIPE if args.backbone_steps > 0 else []
    cfg = load_config(
        REPO / "configs" / "synthetic" / "tiny.yaml",
        [
            *recipe,
            f"data.train_json={ds.train_json}", f"data.train_images={ds.image_dir}",
            f"solver.max_iter={args.steps}", f"solver.warmup_iters={warmup}",
            f"solver.checkpoint_period={max(args.steps // 4, 1)}", f"solver.seed={args.seed}",
            f"train.eval_period={args.probe_every}",
            *args.overrides,
        ],
    )  # fmt: skip
    start = time.time()
    init = None
    if args.backbone_steps > 0:
        init = work / "init"
        if not init.is_dir():  # resumable: the pre-trained backbone is made once
            pre = generate_synthetic(
                work / "backbone_data", num_train=args.backbone_images, num_val=0, image_size=(128, 192),
                seed=args.seed + 1000, held_out=[] if args.pretrain_held_out else list(ds.held_out),
            )  # fmt: skip
            torch.manual_seed(args.seed)
            model = build_training_model(cfg)
            labels = dense_labels(pre.train_json, pre.image_dir, model.preprocessing)
            acc = pretrain_backbone(model, labels, steps=args.backbone_steps, seed=args.seed)
            if args.tower_steps > 0:
                acc = pretrain_backbone(
                    model, labels, steps=args.tower_steps, seed=args.seed, tower=True, train_backbone=False
                )
            save_model(model, init, include_text_encoder=False)
            print(f"backbone pre-trained: colour {100 * acc['colour']:.0f}%, shape {100 * acc['shape']:.0f}% of "
                  "foreground locations (last batch)")  # fmt: skip
    evaluator = probe_evaluator(work / "probe") if args.probe_every > 0 else None
    result = train(cfg, work / "train", resume=True, cpu=True, evaluator=evaluator, weights=init)
    minutes = (time.time() - start) / 60
    if result.interrupted_by is not None:
        print(f"interrupted at step {result.progress.step}; run again to resume")
        return 1
    print(f"trained {result.progress.step} steps in {minutes:.1f} min")

    report = {"steps": result.progress.step, "train_minutes": minutes, "held_out": list(ds.held_out)}
    best = None
    for which in ("model", "model_ema"):
        folder = work / "train" / which
        if not folder.is_dir():
            continue
        model = load_model(folder)
        table = evaluate(model, ds.val_json, ds.image_dir, set(ds.held_out))
        acc = phrase_accuracy(model, work / "single")
        top1 = acc["top1"]
        report[which] = {"summary": table, "top_phrase_accuracy": top1, "phrase_accuracy": acc}
        print(f"\n{which}:   {'AP':>6} {'AP50':>6}  categories")
        for split, row in table.items():
            print(f"  {split:<9} {row['AP']:6.1f} {row['AP50']:6.1f}  {row['categories']}")
        print(f"  top phrase correct on single-shape images: {100 * top1:.0f}% "
              f"(colour {100 * acc['colour']:.0f}%, shape {100 * acc['shape']:.0f}%)")  # fmt: skip
        if best is None or table["all"]["AP"] > report[best]["summary"]["all"]["AP"]:
            best = which
    assert best is not None
    final = work / "train" / best
    if args.mask_steps > 0:
        final, report["mask"] = train_masks(cfg, final, work, ds, args.mask_steps)
    out, size = save_demo(load_model(final), args.out)
    # The fp16 folder must give the same numbers (up to rounding): evaluate it as shipped.
    shipped_model = load_model(out)
    shipped = evaluate(shipped_model, ds.val_json, ds.image_dir, set(ds.held_out), masks=args.mask_steps > 0)
    shipped_top1 = top_phrase_accuracy(shipped_model, work / "single")
    report.update(
        {"saved": best, "folder": str(out), "size_mb": size / 1e6, "shipped": shipped, "shipped_top1": shipped_top1}
    )
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\nsaved {best} to {out} ({size / 1e6:.1f} MB, fp16, text encoder referenced)")
    for split, row in shipped.items():
        masks = f"  mask AP {row['segm_AP']:5.1f}  mask AP50 {row['segm_AP50']:5.1f}" if "segm_AP" in row else ""
        print(f"  shipped {split:<9} AP {row['AP']:5.1f}  AP50 {row['AP50']:5.1f}{masks}")
    print(f"  shipped top phrase correct on single-shape images: {100 * shipped_top1:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
