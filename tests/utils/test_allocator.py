"""glip.utils.allocator: with the fixed glibc mmap threshold a freed activation-sized block
goes back to the system at once, the user's own glibc setting wins, and predictions are
bit-identical with and without it; a CPU Predictor turns oneDNN's primitive cache off unless
the user set its size, with the same predictions (each case in its own process: the settings
are process-wide)."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import REPO
from tests.subprocesses import run_json_many

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

_HEAP = r"""
import json
import torch
from glip.utils.allocator import map_large_blocks

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

threshold = map_large_blocks()
big = torch.ones(6 << 20)  # 24 MiB, mapped; freeing it raises glibc's own threshold to 24 MiB
del big
block = torch.ones(4 << 20)  # 16 MiB: in the heap unless the threshold is fixed
pin = torch.ones(1 << 18)  # 1 MiB after it in the heap, so the heap's top cannot shrink past it
before = rss_mib()
del block
print(json.dumps({"threshold": threshold, "returned_mib": before - rss_mib()}))
"""

_PREDICT = r"""
import json, os
import numpy as np
import glip
from glip.utils import allocator

rng = np.random.default_rng(0)
image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
predictor = glip.Predictor("demo-shapes", device="cpu", batch_size=1)  # GLIP_MMAP_THRESHOLD=0: glibc's own
out = {"before": allocator.map_large_blocks()}
runs = [predictor.predict(image, "red circle. blue square.", threshold=0.0)]
os.environ[allocator.ENV] = str(allocator.DEFAULT_THRESHOLD)
out["after"] = allocator.map_large_blocks.__wrapped__()  # now fixed, in the same process
runs.append(predictor.predict(image, "red circle. blue square.", threshold=0.0))
out["runs"] = [{"boxes": d.boxes.tolist(), "scores": d.scores.tolist()} for d in runs]
print(json.dumps(out))
"""

_ONEDNN = r"""
import json, os
import numpy as np
import glip

rng = np.random.default_rng(0)
image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
predictor = glip.Predictor("demo-shapes", device="cpu", batch_size=1)
runs = [predictor.predict(image, "red circle. blue square.", threshold=0.0) for _ in range(2)]
print(json.dumps({
    "capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
    "runs": [{"boxes": d.boxes.tolist(), "scores": d.scores.tolist()} for d in runs],
}))
"""
_OURS = (
    "MALLOC_MMAP_THRESHOLD_",
    "GLIP_MMAP_THRESHOLD",
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
    "DNNL_PRIMITIVE_CACHE_CAPACITY",
)


def _run(code: str, *envs: dict[str, str]) -> list[dict]:
    """``code`` in one fresh process per environment (side by side), each with ``env`` added
    to ours minus the settings under test."""
    base = {k: v for k, v in os.environ.items() if k not in _OURS}
    base.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return run_json_many([(["-c", code], {**base, **env}) for env in envs], timeout=300)


def test_a_freed_large_block_goes_back_to_the_system() -> None:
    fixed, glibc, users = _run(_HEAP, {}, {"GLIP_MMAP_THRESHOLD": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert fixed["threshold"] == 4 << 20
    assert fixed["returned_mib"] > 12, fixed
    assert glibc["threshold"] == 0  # glibc's dynamic threshold: the heap keeps it
    assert glibc["returned_mib"] < 4, glibc
    assert users["threshold"] == 0  # the user's setting wins


def test_predictions_are_bit_identical_with_and_without() -> None:
    (out,) = _run(_PREDICT, {"GLIP_MMAP_THRESHOLD": "0"})
    assert out["before"] == 0 and out["after"] == 4 << 20
    glibc, fixed = out["runs"]
    assert glibc["boxes"] and fixed == glibc


def test_a_cpu_predictor_turns_onednn_primitive_caching_off_unless_the_user_sized_it() -> None:
    uncached, cached, older = _run(
        _ONEDNN,
        {},
        {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"},  # oneDNN's default size, chosen by the user
        {"DNNL_PRIMITIVE_CACHE_CAPACITY": "64"},  # its older name counts too
    )
    assert uncached["capacity"] == "0"
    assert cached["capacity"] == "1024"
    assert older["capacity"] is None
    assert uncached["runs"][0]["boxes"] and uncached["runs"] == cached["runs"]
    assert uncached["runs"][0] == uncached["runs"][1]
