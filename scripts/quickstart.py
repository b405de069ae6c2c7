"""A first run with no download: the official GLIP-T architecture on a golden test case.

Loads the shrunken GLIP-T checkpoint that the official code produced for our parity tests
(``../shared/fixtures/official/tiny_glip_t``: random weights, official layout), runs
``model.predict`` on its image and prints our detections beside the official ones.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import glip
from glip.text import BUNDLED_TEXT_ENCODERS

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official" / "tiny_glip_t"


def main() -> int:
    if not FIXTURES.is_dir():
        print(f"the golden fixtures are not at {FIXTURES}; see README for the model zoo instead", file=sys.stderr)
        return 1
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
