"""What the ONNX Runtime backends change: demo box AP on a fresh seed, and score / box
differences against PyTorch on the official fixture model.

* demo-shapes on a newly generated synthetic validation set (train_demo.py's image size and
  held-out count, a seed drawn at random and printed, ``--seed`` to repeat one): box AP / AP50
  (``train_demo.evaluate``) with ``torch``, ``onnxruntime`` and ``onnxruntime-int8``;
* the official tiny GLIP-T fixture (``$GLIP_FIXTURES/official/tiny_glip_t``), both cases,
  their captions, threshold 0: per backend the largest score and box differences to PyTorch
  over the detections both return in the same order (the top ``--top``), and whether the
  label order agrees.

    python scripts/onnx_parity.py             # ~10 minutes on 2 loaded cores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def demo_ap(seed: int, num_val: int, work: Path) -> dict:
    import glip
    from glip.data import generate_synthetic

    sys.path.insert(0, str(REPO / "scripts"))
    from train_demo import DEMO_DATA, evaluate

    ds = generate_synthetic(
        work / "data", num_train=0, num_val=num_val, image_size=DEMO_DATA["image_size"], seed=seed,
        held_out=DEMO_DATA["held_out"],
    )  # fmt: skip
    model = glip.Predictor("demo-shapes", device="cpu").model
    return {
        b: evaluate(glip.Predictor(model, backend=b), ds.val_json, ds.image_dir, set(ds.held_out)) for b in BACKENDS
    }


def fixture_differences(top: int) -> dict:
    import torch

    import glip
    from glip.text import BUNDLED_TEXT_ENCODERS

    official = Path(os.environ.get("GLIP_FIXTURES", REPO.parent / "shared" / "fixtures")) / "official" / "tiny_glip_t"
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text"
        text.mkdir()
        (text / "config.json").write_text((official / "bert_config.json").read_text())
        (text / "vocab.txt").write_text((BUNDLED_TEXT_ENCODERS["bert-base-uncased"] / "vocab.txt").read_text())
        model = glip.load_model(official / "model_official.pth", official / "config.yaml", text_encoder=text)
    out = {}
    for case in ("chelsea", "astronaut"):
        data = torch.load(official / f"case_{case}.pth", weights_only=True)
        image, caption = data["image_original_rgb_uint8"].numpy(), data["caption"]
        ref = glip.Predictor(copy.copy(model)).predict(image, caption, threshold=0.0, max_detections=top)
        for backend in BACKENDS[1:]:
            det = glip.Predictor(model, backend=backend).predict(image, caption, threshold=0.0, max_detections=top)
            n = min(len(det), len(ref))
            out[f"{case}/{backend}"] = {
                "detections": [len(ref), len(det)],
                "same_labels_in_order": bool(torch.equal(det.labels[:n], ref.labels[:n])),
                "max_score_diff": float((det.scores[:n] - ref.scores[:n]).abs().max()),
                "max_box_diff_px": float((det.boxes[:n] - ref.boxes[:n]).abs().max()),
                "top_score": [float(ref.scores[0]), float(det.scores[0])],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="synthetic validation seed (default: drawn at random)")
    parser.add_argument("--num-val", type=int, default=80, help="validation images (train_demo's default 80)")
    parser.add_argument("--top", type=int, default=100, help="fixture detections compared (default 100)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"seed {seed}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("GLIP_CACHE", str(Path(tmp) / "cache"))
        for backend, rows in demo_ap(seed, args.num_val, Path(tmp)).items():
            print(f"demo-shapes {backend:<18} " + json.dumps(rows), flush=True)
        for name, row in fixture_differences(args.top).items():
            print(f"tiny_glip_t {name:<28} " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
