"""Where a GLIP process's peak resident memory comes from: loading stages and modules.

One process imports torch, what glip takes from transformers (the config and tokenizer
classes), torchvision's compiled ops and glip (the resident set printed after each, so the
import footprint shows by package), loads a saved GLIP folder with
``glip.Predictor`` (optionally ``--weights-dtype bfloat16``) and runs one call on the
chelsea image (resized by the model to 800 x ~1200) with the prompt of
``scripts/bench_predict.py``. A thread samples the resident set (``/proc/self/statm``) every
2 ms; each sample is labelled by the loading stage or the module running (forward hooks on
modules up to 4 levels deep). It prints the resident set after each stage and the highest
samples with their labels, then ``ru_maxrss`` (the peak, as ``bench_predict.py`` reports it).
Linux only. Memory does not depend on the machine's load; the call's time does.

    python scripts/bench_predict.py --settings glip --batch 1 --runs 1   # or save a folder:
    python -c "import sys; sys.argv=['x']; sys.path.insert(0,'scripts'); import bench_predict as b; b._save_glip('glip-t')"
    python scripts/profile_memory.py glip-t [--weights-dtype bfloat16] [--top 12]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
REPO = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Sampler:
    """The resident set every ``period`` seconds, under the current label."""

    def __init__(self, period: float = 0.002) -> None:
        self.label = "start"
        self.peaks: dict[str, float] = {}
        self._stop = False
        self._period = period
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            rss = _rss_mib()
            self.peaks[self.label] = max(self.peaks.get(self.label, 0.0), rss)
            time.sleep(self._period)

    def stage(self, name: str) -> None:
        self.label = name
        print(f"{name:<34} resident {_rss_mib():7.0f} MiB  peak so far {_peak_mib():7.0f} MiB", flush=True)

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a saved GLIP folder (glip.save_model)")
    parser.add_argument("--weights-dtype", default=None, help="passed to glip.Predictor (e.g. bfloat16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="labels shown, highest first")
    args = parser.parse_args()
    sampler = Sampler()
    sampler.stage("start (python)")
    import torch

    sampler.stage("imported torch")
    import transformers  # noqa: F401

    sampler.stage("imported transformers (lazy)")
    from transformers import AutoTokenizer, BertConfig  # noqa: F401  (what glip needs of transformers)

    sampler.stage("imported BertConfig, AutoTokenizer")
    from glip.utils.imports import load_torchvision_ops

    load_torchvision_ops()  # torchvision's compiled ops, without its Python package
    sampler.stage("loaded torchvision's ops")
    import glip.hub.checkpoint as checkpoint
    from glip.api import Predictor

    sampler.stage("imported glip (predict path)")

    torch.set_num_threads(args.threads)

    def labelled(name: str):
        inner = getattr(checkpoint, name)

        def call(*a, **k):
            sampler.stage(name)
            out = inner(*a, **k)
            sampler.stage(f"after {name}")
            return out

        setattr(checkpoint, name, call)

    for name in ("_text_components", "build_model", "build_in_dtype", "load_state_into", "store_weights"):
        labelled(name)
    sampler.stage("load")
    predictor = Predictor(args.folder, device="cpu", batch_size=1, weights_dtype=args.weights_dtype)
    sampler.stage("loaded")
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_predict import CAPTION, _image

    image, _ = _image()
    for name, module in predictor.model.named_modules():
        if name and name.count(".") <= (5 if name.startswith("backbone.body.layers") else 3):
            module.register_forward_pre_hook(lambda m, a, n=name: setattr(sampler, "label", n))
            module.register_forward_hook(lambda m, a, o, n=name: setattr(sampler, "label", f"after {n}"))
    sampler.stage("call")
    start = time.perf_counter()
    predictor.predict(image, CAPTION, threshold=0.5)
    elapsed = time.perf_counter() - start
    sampler.stage("called")
    sampler.stop()
    print(f"call: {elapsed:.1f} s; highest resident sets by label:")
    for label, rss in sorted(sampler.peaks.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {rss:7.0f} MiB  {label}")
    print(f"peak (ru_maxrss): {_peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
