"""Regenerates tests/golden/tiny_glip.safetensors, the golden outputs of our own tiny GLIP.

    python scripts/make_golden.py            # write the file (pure-PyTorch ops backend)
    python scripts/make_golden.py --check    # compare the stored file with a fresh run; write nothing

Run it only when a change to the model's computation is intended, and say so in the commit:
the file is what tests/golden/test_golden.py holds every later version to. The recorded
case (model, weights, image, prompt, targets) is defined in tests/golden/case.py. The file
is made with the pure-PyTorch ops; the script also reports the largest difference of the
torchvision backend (and of a second run) so that the test's tolerances can be judged.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from glip.ops.backend import torchvision_available, use_backend  # noqa: E402
from tests.golden.case import GOLDEN_FILE, PROMPT, build_tiny_glip, run_case  # noqa: E402


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for key in a:
        if a[key].shape != b[key].shape:
            out[key] = float("inf")
        elif a[key].numel():
            out[key] = (a[key].double() - b[key].double()).abs().max().item()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored file instead of writing it")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    model = build_tiny_glip()
    with use_backend("torch"):
        record = run_case(model)
    with use_backend("torch"):
        again = run_case(model)
    print(f"{len(record['det_scores'])} detections; loss_total {record['loss_total'].item():.6f}")
    print("second run, largest difference:", max(_max_diff(record, again).values()))
    if torchvision_available():
        with use_backend("torchvision"):
            tv = run_case(model)
        diffs = _max_diff(record, tv)
        print("torchvision backend, largest differences:", {k: f"{v:.2e}" for k, v in diffs.items() if v})

    if args.check:
        stored = load_file(GOLDEN_FILE)
        diffs = _max_diff(stored, record)
        print("stored file vs this run:", {k: f"{v:.2e}" for k, v in diffs.items()})
        return 0 if set(stored) == set(record) and max(diffs.values()) < 1e-3 else 1
    metadata = {"prompt": PROMPT, "torch": torch.__version__, "made_by": "scripts/make_golden.py"}
    save_file(record, GOLDEN_FILE, metadata=metadata)
    print(f"wrote {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
