"""A refactor proves itself: dump every user-visible output, then compare bit for bit.

    python scripts/refactor_check.py save before.pt      # on the old code
    python scripts/refactor_check.py compare before.pt   # on the new code: exit 0 iff bit-identical

What it records (CPU, float32, 1 thread):
- the official fixture models (``tiny_glip_t``, ``tiny_glip_a``) on both fixture images:
  ``model.predict`` boxes, scores, labels and phrases (needs ``../shared/fixtures`` or
  ``GLIP_FIXTURES``; skipped with a message otherwise);
- the bundled ``demo-shapes`` on fresh synthetic images: detections with masks for the 16
  names, VQA answers and scores, greedy captions;
- three multi-task training steps (detection + masks, VQA, captions) of
  ``configs/multitask/synthetic.yaml``: every logged loss and a hash of the final weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
torch.set_num_threads(1)


def _fixture_outputs(out: dict, tmp: Path) -> None:
    from tests.conftest import OFFICIAL, load_case, tiny_text_encoder_dir

    if not OFFICIAL.is_dir():
        print(f"no fixtures at {OFFICIAL}: the official-model part is skipped")
        return
    import glip

    for config in ("tiny_glip_t", "tiny_glip_a"):
        model = glip.load_model(
            OFFICIAL / config / "model_official.pth",
            OFFICIAL / config / "config.yaml",
            text_encoder=tiny_text_encoder_dir(config, tmp),
        )
        for case in ("chelsea", "astronaut"):
            c = load_case(config, case)
            det = model.predict(c["image_original_rgb_uint8"].numpy(), c["caption"], threshold=0.0)
            out[f"{config}/{case}"] = {
                "boxes": det.boxes,
                "scores": det.scores,
                "labels": det.labels,
                "phrases": list(det.phrases),
            }


def _demo_outputs(out: dict, tmp: Path) -> None:
    import glip
    from glip.data import generate_synthetic

    data = generate_synthetic(tmp / "demo", num_train=0, num_val=6, image_size=(128, 192), seed=90210)
    record = json.loads(data.val_json.read_text())
    names = [c["name"] for c in sorted(record["categories"], key=lambda c: c["id"])]
    images = [str(data.image_dir / im["file_name"]) for im in record["images"]]
    predictor = glip.Predictor("demo-shapes", device="cpu")
    for i, image in enumerate(images):
        det = predictor.predict(image, names, threshold=0.0, masks=True)
        out[f"demo/detect/{i}"] = {
            "boxes": det.boxes,
            "scores": det.scores,
            "labels": det.labels,
            "phrases": list(det.phrases),
            "masks": det.masks,
        }
    questions = json.loads((data.root / "vqa_val.json").read_text())["questions"][:8]
    by_id = {im["id"]: str(data.image_dir / im["file_name"]) for im in record["images"]}
    for q in questions:
        a = glip.answer(by_id[q["image_id"]], q["question"], model="demo-shapes", device="cpu")
        out[f"demo/vqa/{q['question_id']}"] = {"answer": a.answer, "score": torch.tensor(a.score)}
    for i, image in enumerate(images[:3]):
        c = glip.caption(image, model="demo-shapes", device="cpu")
        out[f"demo/caption/{i}"] = {"text": c.text}


def _training_outputs(out: dict, tmp: Path) -> None:
    from glip.data import generate_synthetic
    from glip.engine import train
    from glip.text import text_encoder_without_dropout
    from tests.engine.test_multitask import _multitask_config

    shapes = generate_synthetic(
        tmp / "train", num_train=16, num_val=4, image_size=96, seed=3,
        colors=("red", "blue"), shapes=("circle", "square"), max_objects=3,
    )  # fmt: skip
    text_dir = text_encoder_without_dropout("all-MiniLM-L6-v2", tmp / "minilm")
    # The multi-task test's run (tests/engine/test_multitask.py), 6 steps of 2 images.
    cfg = _multitask_config(shapes, text_dir, **{"solver.ims_per_batch": 2, "solver.max_iter": 6})
    run = tmp / "run"
    train(cfg, run, cpu=True, progress_bar=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        step = row.get("step")
        losses = {k: v for k, v in row.items() if k.startswith("loss") or k.endswith("loss")}
        out[f"train/step{step}"] = {k: torch.tensor(float(v), dtype=torch.float64) for k, v in sorted(losses.items())}
    # The tensors by name, not the file bytes: safetensors' header order varies between runs.
    from safetensors import safe_open

    digest = hashlib.sha256()
    weights = sorted(run.rglob("*.safetensors"))
    for path in weights:
        with safe_open(str(path), "pt") as f:
            digest.update(json.dumps(f.metadata(), sort_keys=True).encode())
            for key in sorted(f.keys()):
                tensor = f.get_tensor(key).contiguous()
                digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    out["train/weights"] = {"files": [str(p.relative_to(run)) for p in weights], "sha256": digest.hexdigest()}


def collect() -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _fixture_outputs(out, tmp)
        _demo_outputs(out, tmp)
        _training_outputs(out, tmp)
    return out


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    now = collect()
    if args.action == "save":
        torch.save(now, args.path)
        print(f"saved {len(now)} entries to {args.path}")
        return 0
    before = torch.load(args.path, weights_only=False)
    differ = sorted(
        k for k in before.keys() | now.keys() if k not in before or k not in now or not _equal(before[k], now[k])
    )
    for key in differ:
        print(f"DIFFERS: {key}")
    print(f"{len(now) - len(differ)} of {len(before.keys() | now.keys())} entries bit-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
