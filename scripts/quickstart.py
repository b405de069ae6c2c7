"""A first run with no download.

1. The official GLIP-T architecture on a golden test case: loads the shrunken GLIP-T
   checkpoint that the official code produced for our parity tests
   (``../shared/fixtures/official/tiny_glip_t``: random weights, official layout), runs
   ``model.predict`` on its image and prints our detections beside the official ones.
   Those fixtures are not part of the repository (``$GLIP_FIXTURES`` points elsewhere): on
   a plain clone this part is skipped with a message.
2. The bundled ``demo-shapes`` model (trained on synthetic shapes) on a synthetic image.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import glip
from glip.ops.boxes import box_iou
from glip.text import BUNDLED_TEXT_ENCODERS

_ROOT = Path(os.environ.get("GLIP_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
FIXTURES = _ROOT / "official" / "tiny_glip_t"


def demo_shapes() -> None:
    import json

    from glip.data import generate_synthetic
    from glip.hub.zoo import is_cached

    if not is_cached("demo-shapes"):
        print("\nthe demo-shapes weights are not in this checkout (train them with scripts/train_demo.py)")
        return

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(tmp, num_train=0, num_val=1, image_size=(160, 192), seed=7)
        record = json.loads(data.val_json.read_text())
        names = [c["name"] for c in record["categories"]]
        truth = [(names[a["category_id"] - 1], a["bbox"]) for a in record["annotations"]]
        image = data.image_dir / record["images"][0]["file_name"]
        det = glip.predict(str(image), names, model="demo-shapes", threshold=0.3)
    gt_names = [name for name, _ in truth]
    gt_boxes = torch.tensor([[round(x), round(y), round(x + w), round(y + h)] for _, (x, y, w, h) in truth])  # [G, 4]
    print("\ndemo-shapes on a synthetic image holding: "
          + ", ".join(f"{n} at {b}" for n, b in zip(gt_names, gt_boxes.tolist())))  # fmt: skip
    # GLIP scores every phrase on every box: show each box once, with its best phrase
    keep: list[int] = []
    for i in range(len(det)):  # in score order
        if not keep or box_iou(det.boxes[i : i + 1], det.boxes[keep]).max() <= 0.7:
            keep.append(i)
    keep = keep[:5]
    print(f"{len(det)} detections above 0.3; the best phrase of the best {len(keep)} boxes, "
          "and the shape each box overlaps most:")  # fmt: skip
    overlap = box_iou(det.boxes[keep], gt_boxes.float())  # [K, G]
    for i, (iou, j) in zip(keep, zip(*overlap.max(dim=1))):
        box = [round(v) for v in det.boxes[i].tolist()]
        print(f"  {det.phrases[i]:<16} {det.scores[i]:.2f} {box}  on the {gt_names[j]} (IoU {iou:.2f})")


def main() -> int:
    if not FIXTURES.is_dir():
        print(
            f"official fixtures not found at {FIXTURES} (they are not in the repository; set GLIP_FIXTURES): "
            "skipping the official-architecture check, running the bundled demo-shapes model"
        )
        demo_shapes()
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        text_dir = Path(tmp) / "text_encoder"
        text_dir.mkdir()
        shutil.copy(FIXTURES / "bert_config.json", text_dir / "config.json")
        for name in ("vocab.txt", "tokenizer_config.json"):
            shutil.copy(BUNDLED_TEXT_ENCODERS["bert-base-uncased"] / name, text_dir / name)
        model = glip.load_model(FIXTURES / "model_official.pth", FIXTURES / "config.yaml", text_encoder=text_dir)
    case = torch.load(FIXTURES / "case_chelsea.pth", weights_only=True)
    t0 = time.perf_counter()
    det = model.predict(case["image_original_rgb_uint8"].numpy(), case["caption"], threshold=0.0)
    elapsed = time.perf_counter() - t0
    ref = case["predictions"]["gpu_ml_nms_emulated"]["final_original_image_coords"]
    order = torch.sort(ref["fields"]["scores"], descending=True).indices
    print(f"prompt: {case['caption']!r}   {len(det)} detections in {elapsed:.2f} s (official: {len(order)})")
    print(f"{'ours':<58} | official")
    for i in range(5):
        ours = f"{det.phrases[i]:<17} {det.scores[i]:.6f} {[round(v, 2) for v in det.boxes[i].tolist()]}"
        j = order[i]
        theirs = f"{case['label_to_entity'][int(ref['fields']['labels'][j])]:<17} {ref['fields']['scores'][j]:.6f}"
        print(f"{ours:<58} | {theirs} {[round(v, 2) for v in ref['bbox'][j].tolist()]}")
    gap = (det.boxes - ref["bbox"][order]).abs().max().item()
    print(f"max box difference to the official output: {gap:.2e} px")
    demo_shapes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
