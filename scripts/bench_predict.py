"""CPU latency and peak memory of full-size GLIP-T against a peer, Grounding DINO-T, in one run.

Every setting runs in its own process (so its peak RSS is its own), on the same image and
prompt, with random weights (nothing is downloaded):

* ``glip``       GLIP-T (configs/glip-t.yaml), the default op backends, loaded as a user loads
                 it: a random-init GLIP-T is saved once with ``glip.save_model`` to a temporary
                 folder (model.safetensors + config.yaml + text_encoder/) by a separate
                 preparatory process (not measured), and the measured process loads that
                 folder with ``glip.Predictor(folder)``. Its peak RSS therefore includes
                 building the model and reading the checkpoint, then the calls;
* ``glip-pth``   the same random-init GLIP-T saved instead as an official-layout checkpoint
                 (``{"model": {"module." + official key: tensor}}``, ``torch.save``; keys as
                 ``glip.hub.official_keys`` reads them) and loaded as
                 ``glip.Predictor(FILE, config="glip-t")`` (CLI: ``--weights FILE --config glip-t``);
* ``glip-pure``  the same with ``GLIP_DISABLE_TORCHVISION=1`` (pure-PyTorch ops only);
* ``glip-bf16``  the same folder loaded with ``glip.Predictor(folder, weights_dtype="bfloat16")``:
                 weights stored in bfloat16, compute in float32 (the opt-in low-memory mode);
* ``glip-bf16-mmap``  the same with ``MALLOC_MMAP_THRESHOLD_=8388608`` (glibc hands every
                 freed block of 8 MiB or more back to the system at once, instead of
                 keeping it in the heap; ``--mmap-threshold``: measured on the 2-vCPU
                 machine, 128 KiB: 0.51x the peer's peak RSS but 2.2x the latency of
                 glip-bf16; 8 MiB: 0.54x at 1.4x; 16 MiB: 0.57x at 1.05x);
* ``glip-compile``  the ``glip`` setting with its backbone and trunk compiled in place by
                 ``torch.compile`` (inductor, default options), with an empty compile cache
                 (``TORCHINDUCTOR_CACHE_DIR`` in the temporary folder), so the warm-up call,
                 printed as "first call", includes compiling as a new user meets it. Not in the
                 default table (``--settings ... glip-compile``); the README says why it is
                 not offered;
* ``gdino``      Hugging Face ``GroundingDinoForObjectDetection`` with the default
                 ``GroundingDinoConfig`` (= Grounding DINO-T: Swin-T, 6+6 layers, 900 queries)
                 and the bundled bert-base-uncased text config, through its processor and
                 ``post_process_grounded_object_detection``. It is built at random init and
                 reads no checkpoint (its peak RSS includes construction only).

"peak RSS" is the process's ``ru_maxrss`` at the end; "after build" is the same right after
the model is ready (for glip: built and its checkpoint loaded).

Image: chelsea (skimage, else the official fixture's copy, else a generated 300x451 image),
resized to 800 x ~1200 by each model's own preprocessing; prompt "a cat. a remote control.
a dog."; float32, eval, ``--threads`` threads; one warm-up call, then the median of
``--runs`` calls (the individual calls are printed). Batch 4 is timed per image as well.

    python scripts/bench_predict.py                       # the full table
    python scripts/bench_predict.py --settings glip --batch 1 --runs 1   # a quick look
    python scripts/bench_predict.py --ops                 # per-op timings (deformable conv, fusion, NMS)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPTION = "a cat. a remote control. a dog."
SETTINGS = ("glip", "glip-pth", "glip-pure", "glip-bf16", "glip-bf16-mmap", "gdino")
OPT_IN_SETTINGS = ("glip-compile",)  # measured only when named in --settings
# glip through Predictor(backend=...): ONNX Runtime (float32; dynamic int8), measured when named
BACKEND_SETTINGS = {"glip-onnxruntime": "onnxruntime", "glip-onnxruntime-int8": "onnxruntime-int8"}
_ENV = {"glip-pure": {"GLIP_DISABLE_TORCHVISION": "1"}, "glip-bf16-mmap": {"MALLOC_MMAP_THRESHOLD_": "8388608"}}
_WEIGHTS_DTYPE = {
    "glip-bf16": "bfloat16",
    "glip-bf16-mmap": "bfloat16",
}  # glip settings loaded with Predictor(weights_dtype=...)


def _image():
    """chelsea as an [H, W, 3] uint8 array, and where it came from."""
    import numpy as np

    try:
        from skimage import data

        return data.chelsea(), "skimage chelsea"
    except ImportError:
        pass
    case = REPO.parent / "shared/fixtures/official/tiny_glip_t/case_chelsea.pth"
    if case.is_file():
        import torch

        return torch.load(case, weights_only=True)["image_original_rgb_uint8"].numpy(), "chelsea (fixture copy)"
    yy, xx = np.mgrid[:300, :451]
    rgb = np.stack([(xx * 0.5) % 256, (yy * 0.8) % 256, ((xx + yy) * 0.3) % 256], -1).astype(np.uint8)
    return rgb, "generated 300x451"


def _build_glip():
    from glip.config import load_config
    from glip.modeling.build import build_model
    from glip.modeling.language.text_encoder import load_bert_config
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    te = BUNDLED_TEXT_ENCODERS["bert-base-uncased"]
    cfg = load_config(REPO / "configs" / "glip-t.yaml")
    return build_model(cfg, load_bert_config(te), load_tokenizer(te)).eval()


def _save_glip(folder: str) -> None:
    """The preparatory step (own process, not measured): a random-init GLIP-T saved as a folder."""
    import torch

    from glip.hub.checkpoint import save_model

    torch.manual_seed(0)
    save_model(_build_glip(), folder)


def _official_key(key: str) -> str:
    """Our key -> the official GLIP-T key (the inverse of ``glip.hub.official_keys`` for
    GLIP-T's modules; :func:`_save_official` checks it by remapping back)."""
    import re

    rules = [
        (r"^text_encoder\.bert\.", lambda m: "language_backbone.body.model."),
        (r"^backbone\.fpn\.lateral_convs\.(\d)\.", lambda m: f"backbone.fpn.fpn_inner{int(m[1]) + 2}."),
        (r"^backbone\.fpn\.output_convs\.(\d)\.", lambda m: f"backbone.fpn.fpn_layer{int(m[1]) + 2}."),
        (r"^backbone\.fpn\.(p6|p7)\.", lambda m: f"backbone.fpn.top_blocks.{m[1]}."),
        (r"^anchor_generator\.", lambda m: "rpn.anchor_generator."),
        (r"^heads\.grounding\.text_proj\.", lambda m: "rpn.head.dot_product_projection_text."),
        (r"^heads\.grounding\.", lambda m: "rpn.head."),
        (
            r"^trunk\.blocks\.(\d+)\.fusion\.norm_(v|l)\.",
            lambda m: f"rpn.head.dyhead_tower.{3 * int(m[1])}.b_attn.layer_norm_{m[2]}.",
        ),
        (r"^trunk\.blocks\.(\d+)\.fusion\.", lambda m: f"rpn.head.dyhead_tower.{3 * int(m[1])}.b_attn."),
        (r"^trunk\.blocks\.(\d+)\.text_layer\.", lambda m: f"rpn.head.dyhead_tower.{3 * int(m[1]) + 1}."),
    ]
    dyconv = {"from_coarser.norm.": "DyConv.0.bn.", "same.norm.": "DyConv.1.bn.", "from_finer.norm.": "DyConv.2.bn.",
              "from_coarser.": "DyConv.0.", "same.": "DyConv.1.", "from_finer.": "DyConv.2.",
              "scale_attn.": "AttnConv.1.", "dyrelu.fc1.": "relu.fc.0.", "dyrelu.fc2.": "relu.fc.2.", "offset.": "offset."}  # fmt: skip
    m = re.match(r"^trunk\.blocks\.(\d+)\.dyconv\.", key)
    if m:
        rest = key[m.end() :]
        ours = next(k for k in dyconv if rest.startswith(k))
        return f"rpn.head.dyhead_tower.{3 * int(m[1]) + 2}.{dyconv[ours]}{rest[len(ours) :]}"
    for pattern, official in rules:
        m = re.match(pattern, key)
        if m:
            return official(m) + key[m.end() :]
    return key  # backbone.body.*


def _save_official(path: str) -> None:
    """The preparatory step of ``glip-pth`` (own process, not measured): the random-init GLIP-T
    of :func:`_save_glip` saved in the official checkpoint layout."""
    import torch

    from glip.hub.official_keys import remap_official_state_dict

    torch.manual_seed(0)
    state = _build_glip().state_dict()
    official = {"module." + _official_key(k): v for k, v in state.items()}
    back = remap_official_state_dict(official)
    if back.keys() != state.keys():
        raise RuntimeError(f"official layout does not map back: {sorted(set(back) ^ set(state))[:5]}")
    torch.save({"model": official, "iteration": 0}, path)


def _glip_call(
    batch: int,
    device: str,
    folder: str,
    weights_dtype: str | None = None,
    compile: bool = False,
    backend: str = "torch",
):
    from glip.api import Predictor

    if folder.endswith(".pth"):  # glip-pth: an official-layout checkpoint given with its config
        predictor = Predictor(folder, config="glip-t", device=device, batch_size=batch, backend=backend)
    else:
        predictor = Predictor(folder, device=device, batch_size=batch, weights_dtype=weights_dtype, backend=backend)
    if compile:  # in place: the modules keep their names and state-dict keys
        predictor.model.backbone.compile()
        predictor.model.trunk.compile()
    return lambda images: predictor.predict(images, CAPTION, threshold=0.5)


def build_gdino(device: str, size: dict | None = None):
    """The peer at random init: ``(model, tokenizer, processor)``; ``size``: the image
    processor's resize (default: its own, 800 x 1333)."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    from glip.text import BUNDLED_TEXT_ENCODERS

    bert = BUNDLED_TEXT_ENCODERS["bert-base-uncased"]
    text_config = BertConfig.from_pretrained(str(bert)).to_dict()
    model = GroundingDinoForObjectDetection(GroundingDinoConfig(text_config=text_config)).eval().to(device)
    tokenizer = BertTokenizerFast.from_pretrained(str(bert))
    image_processor = GroundingDinoImageProcessor() if size is None else GroundingDinoImageProcessor(size=size)
    return model, tokenizer, GroundingDinoProcessor(image_processor, tokenizer)


def _gdino_call(batch: int, device: str):
    import torch

    model, _, processor = build_gdino(device)

    @torch.no_grad()
    def call(images):
        inputs = processor(images=images, text=[CAPTION] * len(images), return_tensors="pt").to(device)
        outputs = model(**inputs)
        sizes = [img.shape[:2] for img in images]
        return processor.post_process_grounded_object_detection(
            outputs, inputs.input_ids, threshold=0.5, text_threshold=0.25, target_sizes=sizes
        )

    return call


def run_one(setting: str, batch: int, runs: int, threads: int, device: str, folder: str | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if setting == "gdino":
        call = _gdino_call(batch, device)
    else:
        call = _glip_call(
            batch,
            device,
            folder,
            _WEIGHTS_DTYPE.get(setting),
            compile=setting == "glip-compile",
            backend=BACKEND_SETTINGS.get(setting, "torch"),
        )
    rss_after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image, source = _image()
    images = [image] * batch

    def timed():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        call(images)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = timed()  # warm-up (for glip-compile: compiling)
    times = [timed() for _ in range(runs)]
    from glip.ops import active_backends

    return {
        "setting": setting,
        "batch": batch,
        "first_call_s": round(first, 3),
        "runs_s": [round(t, 3) for t in times],
        "median_s_per_image": statistics.median(times) / batch,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_mib": rss_after_build,
        "backends": active_backends(device) if setting != "gdino" else None,
        "image": source,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--settings", nargs="+", default=None, choices=SETTINGS + OPT_IN_SETTINGS + tuple(BACKEND_SETTINGS)
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (4: glip only)")
    parser.add_argument("--peer-batch", action="store_true", help="also time the peer at every batch size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="measured processes at once (default 1). More only for peak RSS on a busy machine: "
        "concurrent settings slow each other, so their latencies are not comparable",
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=int(_ENV["glip-bf16-mmap"]["MALLOC_MMAP_THRESHOLD_"]),
        metavar="BYTES",
        help="glip-bf16-mmap's MALLOC_MMAP_THRESHOLD_ (default %(default)s)",
    )
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument(
        "--glip-folder",
        help="load this saved random-init GLIP-T folder (e.g. one kept from an earlier run) instead of saving one",
    )
    parser.add_argument("--ops", action="store_true", help="per-op timings instead (see scripts/bench_ops.py)")
    from bench_classes import CLASS_SETTINGS, add_class_args, main_classes, run_classes  # the --classes mode

    add_class_args(parser)
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--_folder", help=argparse.SUPPRESS)
    parser.add_argument("--_save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._classes_one:
        print(json.dumps(run_classes(args)))
        return
    if args.classes:
        args.settings = args.settings or list(CLASS_SETTINGS)
        return main_classes(args)
    args.settings = args.settings or list(SETTINGS)
    if args._save:
        if args._save.endswith(".pth"):
            _save_official(args._save)
        else:
            _save_glip(args._save)
        return
    if args._one:
        setting, batch = args._one.split(",")
        print(json.dumps(run_one(setting, int(batch), args.runs, args.threads, args.device, args._folder)))
        return
    if args.ops:
        os.execv(
            sys.executable, [sys.executable, str(REPO / "scripts" / "bench_ops.py"), "--threads", str(args.threads)]
        )

    import torch

    print(
        f"torch {torch.__version__} | CPU {_cpu_model()} ({os.cpu_count()} logical) | {args.threads} threads | "
        f"device {args.device} | {args.runs} timed calls after 1 warm-up | prompt {CAPTION!r}"
        + (f" | {args.jobs} settings at once (latencies not comparable)" if args.jobs > 1 else ""),
        flush=True,
    )
    plan = [(s, b) for b in args.batch for s in args.settings if b == 1 or s != "gdino" or args.peer_batch]
    with tempfile.TemporaryDirectory(prefix="bench_glip_") as tmp:
        rows = _run_plan(plan, args, Path(args.glip_folder) if args.glip_folder else Path(tmp) / "glip-t", Path(tmp))
    _report(rows, args)


def _run_plan(plan: list[tuple[str, int]], args: argparse.Namespace, folder: Path, scratch: Path) -> list[dict]:
    base_env = dict(os.environ, PYTHONUNBUFFERED="1")
    base_env["PYTHONPATH"] = os.pathsep.join([str(REPO), base_env.get("PYTHONPATH", "")])
    if any(s not in ("gdino", "glip-pth") for s, _ in plan) and not args.glip_folder:
        res = subprocess.run(
            [sys.executable, __file__, "--_save", str(folder)], capture_output=True, text=True, env=base_env
        )
        if res.returncode != 0:
            print(f"saving the random-init GLIP-T failed\n{res.stderr[-2000:]}", file=sys.stderr, flush=True)
            plan = [(s, b) for s, b in plan if s in ("gdino", "glip-pth")]
    pth = scratch / "glip-t-official.pth"
    if any(s == "glip-pth" for s, _ in plan):
        res = subprocess.run(
            [sys.executable, __file__, "--_save", str(pth)], capture_output=True, text=True, env=base_env
        )
        if res.returncode != 0:
            print(f"saving the official-layout GLIP-T failed\n{res.stderr[-2000:]}", file=sys.stderr, flush=True)
            plan = [(s, b) for s, b in plan if s != "glip-pth"]
    procs: list[tuple[str, int, subprocess.Popen]] = []
    done: list[dict | None] = []
    for setting, batch in plan:
        cmd = [sys.executable, __file__, "--_one", f"{setting},{batch}", "--runs", str(args.runs)]
        cmd += ["--threads", str(args.threads), "--device", args.device]
        cmd += ["--_folder", str(pth if setting == "glip-pth" else folder)]
        env = dict(base_env, **_ENV.get(setting, {}))
        if setting == "glip-bf16-mmap":
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        if setting == "glip-compile":  # a cold compile cache, as a new user has
            env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / f"inductor-cache-{batch}")
        if setting in BACKEND_SETTINGS:  # an empty ONNX cache: the first call exports
            env["GLIP_CACHE"] = str(scratch / "glip-cache")
        if len(procs) >= args.jobs:  # at most --jobs measured processes at once
            done.append(_print_row(*procs.pop(0)))
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append((setting, batch, popen))
    done.extend(_print_row(*p) for p in procs)
    return [row for row in done if row is not None]


def _print_row(setting: str, batch: int, popen: subprocess.Popen) -> dict | None:
    stdout, stderr = popen.communicate()
    if popen.returncode != 0:
        print(f"{setting} batch {batch}: failed\n{stderr[-2000:]}", file=sys.stderr, flush=True)
        return None
    r = json.loads(stdout.strip().splitlines()[-1])
    print(
        f"{setting:<10} batch {batch}  {r['median_s_per_image']:7.2f} s/image (calls {r['runs_s']})  "
        f"peak RSS {r['peak_rss_mib']:6.0f} MiB (after build {r['rss_after_build_mib']:.0f})"
        + (f"  backends {r['backends']}" if r["backends"] else "")
        + (
            f"  first call {r['first_call_s']:.1f} s"
            if setting == "glip-compile" or setting in BACKEND_SETTINGS
            else ""
        ),
        flush=True,
    )
    return r


def _report(rows: list[dict], args: argparse.Namespace) -> None:
    peer = next((r for r in rows if r["setting"] == "gdino" and r["batch"] == 1), None)
    if rows:
        print(f"image: {rows[0]['image']}")
    if "glip-bf16-mmap" in args.settings:
        print(f"glip-bf16-mmap: MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}")
    if peer:
        print("ratios to Grounding DINO-T (batch 1): latency, peak RSS")
        for r in rows:
            if r["setting"] != "gdino" and r["batch"] == 1:
                print(
                    f"  {r['setting']:<10} {r['median_s_per_image'] / peer['median_s_per_image']:.2f}x latency  "
                    f"{r['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x peak RSS"
                )
    for s in args.settings:
        one = next((r for r in rows if r["setting"] == s and r["batch"] == 1), None)
        for r in rows:
            if one and r["setting"] == s and r["batch"] > 1:
                print(
                    f"{s} batch {r['batch']} vs 1: {1 / r['median_s_per_image']:.3f} vs "
                    f"{1 / one['median_s_per_image']:.3f} images/s "
                    f"({one['median_s_per_image'] / r['median_s_per_image']:.2f}x per image)"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
