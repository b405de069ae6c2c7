"""The bundled demo model on fresh synthetic seeds: the numbers issue #25 sets goals for,
each as the mean over seeds with the spread and every seed's value.

    python scripts/eval_demo.py                       # 3 seeds drawn at random (printed), 100 images each
    python scripts/eval_demo.py --seeds 11 22 33 --num-images 100 --model demo-shapes

Per seed (a new ``glip data synthetic`` set: 100 validation images of the demo's sizes):

- box AP50 and mask AP50 (pycocotools) with all 16 class names prompted;
- VQA accuracy (the official formula) overall and per question type;
- confident mistakes: detections above ``--conf`` (0.5) whose phrase is not the shape under
  them, split into a second phrase on a shape another detection already names rightly
  (``duplicate``), a wrong colour word only, a wrong shape word only, both wrong, and a box
  on no shape (best IoU < 0.5);
- captions that name at least one shape and only shapes present in the image (the model's
  own decoding: its beam size and re-ranking, as ``glip caption`` runs it);
- the share of captions that ``glip pseudo-label`` keeps (at least one box) at its default
  threshold with the model as teacher.

Seeds are drawn from the operating system unless given, so the model is never judged on a
seed chosen for it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
TASKS = ("detection", "vqa", "mistakes", "captions", "pseudo-label")


def _iou(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def confident_mistakes(model: Any, val_json: Path, image_dir: Path, conf: float) -> dict[str, float]:
    """Detections above ``conf`` with all 16 names prompted, by kind of mistake (see the
    module docstring)."""
    data = json.loads(val_json.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    prompt = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    gts: dict[int, list[tuple[list[float], str]]] = {}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        gts.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], names[a["category_id"]]))
    kinds: Counter[str] = Counter()
    for record in data["images"]:
        det = model.predict(image_dir / record["file_name"], prompt, threshold=conf)
        shapes = gts.get(record["id"], [])
        named_right: set[int] = set()
        rows = []
        for box, phrase in zip(det.boxes.tolist(), det.phrases):
            ious = [_iou(box, g) for g, _ in shapes]
            best = max(range(len(ious)), key=ious.__getitem__) if ious else -1
            rows.append((best if best >= 0 and ious[best] >= 0.5 else -1, phrase))
            if rows[-1][0] >= 0 and shapes[best][1] == phrase:
                named_right.add(best)
        for best, phrase in rows:
            kinds["detections"] += 1
            if best < 0:
                kinds["no shape"] += 1
                continue
            truth = shapes[best][1]
            if truth == phrase:
                kinds["right"] += 1
            elif best in named_right:
                kinds["duplicate"] += 1
            else:
                (c, s), (tc, ts) = phrase.split(), truth.split()
                kinds["colour wrong" if s == ts else "shape wrong" if c == tc else "both wrong"] += 1
    return dict(kinds)


def token_probabilities(model: Any, val_json: Path, image_dir: Path, limit: int = 40) -> dict[str, float]:
    """The diagnosis of the confident mistakes: with all 16 names prompted, at each shape's
    best anchor for its own name (the highest mean token probability x centerness), the mean
    probability of the colour token and of the shape token of the right phrase, of the
    phrases sharing its colour word only, its shape word only, or neither (first ``limit``
    images). A grounding head that binds the words scores the shared word of a wrong
    phrase low; one that scores words on their own scores it like the right phrase's."""
    import torch

    from glip.structures import ImageBatch

    data = json.loads(val_json.read_text())
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    by_id = {c["id"]: c["name"] for c in data["categories"]}
    (chunk,) = model.prepare_prompt(names)
    truths: dict[int, list[str]] = {}
    for a in data["annotations"]:
        truths.setdefault(a["image_id"], []).append(by_id[a["category_id"]])
    sums: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for record in data["images"][:limit]:
        tensor, _ = model.preprocessing(image_dir / record["file_name"])
        batch = ImageBatch.from_tensors([tensor], model.preprocessing.size_divisibility)
        with torch.no_grad():
            out = model.forward_features(model.backbone(batch.tensor), chunk.input_ids, chunk.attention_mask,
                                         use_prompt_offset=False, heads=("grounding",))  # fmt: skip
        probs = torch.cat([level[0] for level in out.head.dot_product_logits]).float().sigmoid()  # [N, T]
        centerness = torch.cat([c[0, 0].flatten() for c in out.head.centerness]).float().sigmoid()  # [N]
        for truth in truths.get(record["id"], []):
            own = chunk.label_to_token[names.index(truth) + 1]
            anchor = int((probs[:, own].mean(1) * centerness).argmax())
            colour, shape = truth.split()
            for j, name in enumerate(names):
                c, s = name.split()
                kind = (
                    "right"
                    if name == truth
                    else "same colour"
                    if c == colour
                    else "same shape"
                    if s == shape
                    else "neither"
                )
                tokens = chunk.label_to_token[j + 1]
                for word, token in (("colour", tokens[0]), ("shape", tokens[-1])):
                    sums[f"{kind}: {word} token"] += float(probs[anchor, token])
                    counts[f"{kind}: {word} token"] += 1
    return {k: sums[k] / counts[k] for k in sorted(counts)}


def caption_faithfulness(model: Any, val_json: Path, image_dir: Path) -> float:
    """Share of images whose caption (the model's decoding settings) names at least one
    colour-shape pair and only pairs present (a caption naming none, "a a and", is not
    faithful, only empty)."""
    from glip.captioning import caption_image
    from glip.data.synthetic import DEFAULT_COLORS, DEFAULT_SHAPES

    data = json.loads(val_json.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    present: dict[int, set[str]] = {r["id"]: set() for r in data["images"]}
    for a in data["annotations"]:
        present[a["image_id"]].add(names[a["category_id"]])
    good = 0
    for record in data["images"]:
        words = caption_image(model, image_dir / record["file_name"], ground=False).text.split()
        named = {f"{c} {s}" for c, s in zip(words, words[1:]) if c in DEFAULT_COLORS and s in DEFAULT_SHAPES}
        good += bool(named) and named <= present[record["id"]]  # a caption naming no shape says nothing
    return good / max(len(data["images"]), 1)


def pseudo_label_keep_rate(model_name: str, root: Path, work: Path) -> float:
    """Share of the set's validation captions that ``glip pseudo-label`` (default
    threshold) gives at least one box."""
    out = work / "pseudo.json"
    cmd = [sys.executable, "-m", "glip.cli", "pseudo-label", "--captions", str(root / "captions_val.json"),
           "--images", str(root / "images"), "--model", model_name, "--out", str(out), "--quiet"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    kept = len(json.loads(out.read_text())["images"])  # one image record per caption with a box
    captions = json.loads((root / "captions_val.json").read_text())["annotations"]
    return kept / max(len(captions), 1)


def summarize(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {spread:.3f}  (" + ", ".join(f"{v:.3f}" for v in values) + ")"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo-shapes")
    p.add_argument("--seeds", type=int, nargs="*", help="data seeds (default: 3 drawn at random)")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--conf", type=float, default=0.5, help="the confidence of a 'confident' detection")
    p.add_argument("--skip-pseudo-label", action="store_true")
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS,
        default=list(TASKS),
        help="what to measure (default: all; --tasks vqa: the answers alone, a few seconds a seed)",
    )
    p.add_argument("--work", help="folder for the generated sets (default: a temporary one)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: up to 2)")
    p.add_argument(
        "--tokens",
        action="store_true",
        help="also print the token probabilities of right and half-right phrases (token_probabilities)",
    )
    args = p.parse_args()

    import torch
    from train_demo import DEMO_DATA, evaluate

    import glip
    from glip.data import generate_synthetic
    from glip.tools.vqa_cli import evaluate_vqa

    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    seeds = args.seeds or [random.SystemRandom().randrange(10**6, 10**7) for _ in range(3)]
    print("seeds:", " ".join(map(str, seeds)), flush=True)
    model = glip.load_model(args.model)
    rows: dict[str, list[float]] = {}
    mistakes_total: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for seed in seeds:
            root = work / f"seed{seed}"
            ds = generate_synthetic(root, num_train=0, num_val=args.num_images,
                                    image_size=DEMO_DATA["image_size"], seed=seed)  # fmt: skip
            found: dict[str, float] = {}
            if "detection" in args.tasks:
                det = evaluate(model, ds.val_json, ds.image_dir, set(), masks=model.has_masks)["all"]
                found["box AP50"] = det["AP50"] / 100
                if "segm_AP50" in det:
                    found["mask AP50"] = det["segm_AP50"] / 100
            if "vqa" in model.heads and "vqa" in args.tasks:
                vqa = evaluate_vqa(model, root / "vqa_val.json", ds.image_dir, progress=False)
                found["VQA accuracy"] = vqa["accuracy"]
                for qtype, acc in vqa["per_question_type"].items():
                    found[f"  VQA {qtype}"] = acc
            if args.tokens:
                tokens = token_probabilities(model, ds.val_json, ds.image_dir)
                print(f"seed {seed} token probabilities: " + ", ".join(f"{k} {v:.3f}" for k, v in tokens.items()))
            if "mistakes" in args.tasks:
                kinds = confident_mistakes(model, ds.val_json, ds.image_dir, args.conf)
                mistakes_total.update(kinds)
                wrong = kinds.get("detections", 0) - kinds.get("right", 0)
                found[f"wrong detections above {args.conf}"] = float(wrong)
            if "caption" in model.heads and "captions" in args.tasks:
                found["captions naming only present shapes"] = caption_faithfulness(model, ds.val_json, ds.image_dir)
            if "pseudo-label" in args.tasks and not args.skip_pseudo_label:
                # A folder of this run's own: pseudo-label resumes from a folder's shards.
                pl_dir = Path(tempfile.mkdtemp(prefix="pl-", dir=root))
                found["pseudo-label keep rate"] = pseudo_label_keep_rate(args.model, root, pl_dir)
            print(f"seed {seed}: " + ", ".join(f"{k.strip()} {v:.3f}" for k, v in found.items()), flush=True)
            for k, v in found.items():
                rows.setdefault(k, []).append(v)
    print(f"\n{args.model} on {len(seeds)} fresh seeds x {args.num_images} images: mean ± std (per seed)")
    for k, v in rows.items():
        print(f"{k:<40} {summarize(v)}")
    print("confident detections by kind, all seeds:", dict(mistakes_total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
