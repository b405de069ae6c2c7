"""Small random COCO / LVIS ground truths and perturbed detections for the evaluation tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_ground_truth(seed: int, num_images: int = 8, num_categories: int = 5, lvis: bool = False) -> dict[str, Any]:
    """Images of 640x480 with 0-6 boxes of mixed sizes (small, medium and large areas)."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c + 1, "name": f"thing_{c + 1}"} for c in range(num_categories)]
    if lvis:
        for c in cats:
            c["frequency"] = "rcf"[(c["id"] - 1) % 3]
    images, anns = [], []
    for i in range(num_images):
        image = {"id": 100 + i, "file_name": f"img_{i}.png", "height": 480, "width": 640}
        present = set()
        for _ in range(int(rng.integers(0, 7))):
            side = float(rng.choice([12.0, 20.0, 50.0, 80.0, 150.0]) * rng.uniform(0.8, 1.2))
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = int(rng.integers(1, num_categories + 1))
            present.add(cat)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image["id"],
                    "category_id": cat,
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
        if lvis:
            absent = [c["id"] for c in cats if c["id"] not in present]
            image["neg_category_ids"] = [c for c in absent if rng.random() < 0.5]
            image["not_exhaustive_category_ids"] = [c for c in present if rng.random() < 0.3]
        images.append(image)
    return {"images": images, "annotations": anns, "categories": cats}


def perturbed_results(gt: dict[str, Any], seed: int, false_positives: int = 3) -> list[dict[str, Any]]:
    """Jittered copies of most ground-truth boxes plus random false positives, with a few
    tied scores."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.12, size=4) * np.array([w, h, w, h])
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"] if rng.random() > 0.1 else int(rng.integers(1, 6)),
                "bbox": [
                    float(x + jitter[0]),
                    float(y + jitter[1]),
                    float(max(w + jitter[2], 1)),
                    float(max(h + jitter[3], 1)),
                ],
                "score": float(np.round(rng.uniform(0.05, 1.0), 2)),
            }
        )
    num_cats = len(gt["categories"])
    for image in gt["images"]:
        for _ in range(false_positives):
            w, h = rng.uniform(10, 200, size=2)
            out.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, num_cats + 1)),
                    "bbox": [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)), float(w), float(h)],
                    "score": float(np.round(rng.uniform(0.05, 1.0), 2)),
                }
            )
    return out


def ground_truth_as_results(gt: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
    ]
