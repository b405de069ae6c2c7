"""The bundled demo-shapes model runs offline and finds shapes."""

from __future__ import annotations

import json

import torch

import glip
from glip.data import generate_synthetic
from glip.hub.zoo import is_cached
from glip.ops.boxes import box_iou


def test_demo_shapes_localises_objects(tmp_path):
    assert is_cached("demo-shapes"), "glip/assets/demo-shapes is part of the package"
    data = generate_synthetic(tmp_path, num_train=0, num_val=6, image_size=(128, 192), seed=123)
    record = json.loads(data.val_json.read_text())
    names = [c["name"] for c in sorted(record["categories"], key=lambda c: c["id"])]
    predictor = glip.Predictor("demo-shapes", device="cpu")
    for image in record["images"]:
        gt = torch.tensor(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in record["annotations"]
                if a["image_id"] == image["id"]
            ]
        )
        det = predictor.predict(str(data.image_dir / image["file_name"]), names, threshold=0.0)
        assert set(det.phrases) <= set(names)
        # The best-scoring box lies on one of the shapes (IoU > 0.5 with a ground-truth box).
        assert box_iou(det.boxes[:1], gt).max() > 0.5, image["file_name"]
