"""``bench_predict.py --classes 1 80 365 1203``: seconds per image against a long class list.

Same photo, same random-init models and one process per setting as the main table
(:mod:`bench_predict`). For each class count:

* ``glip`` (and ``glip-onnxruntime`` / ``glip-onnxruntime-int8`` when named): a
  :class:`glip.Predictor` with its default chunking (prompts of at most 256 tokens and 80
  phrases) whose class list is encoded once (``Predictor.encode_prompt``, timed apart as
  "text once"); each timed call is ``predict(image, encoded)``: the backbone once, the chunks
  ``prompts_per_pass`` at a time through the trunk and head, merged;
* ``gdino``: Grounding DINO-T as its users run a long list: the names cut into prompts of at
  most 256 tokens (``"name. name. ..."``, packed in order by :func:`glip.api.chunk_prompt`),
  one ``processor(images=..., text=...)`` + forward + ``post_process_grounded_object_detection``
  per prompt, the results concatenated.

Class names: the 80 COCO names, then the 1000 ImageNet-1k names shipped in torchvision's
weight metadata (``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``, no download), then
``"object NNN"`` to reach the count (1203: 80 + 1000 distinct + 123 synthetic). One warm-up call
(1 class), then ``--runs`` calls per count (median).

    python scripts/bench_predict.py --classes 1 80 365 1203 --runs 1
    python scripts/bench_predict.py --classes 1 80 --settings glip gdino --min-size 400   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_predict as bp

CLASS_SETTINGS = ("glip", "gdino")
COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()


def class_names(n: int) -> list[str]:
    """``n`` distinct class names: COCO, then ImageNet-1k (torchvision metadata), then ``object NNN``."""
    names = [c.replace("_", " ") for c in COCO]
    try:
        from torchvision.models import ResNet50_Weights

        names += ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    except ImportError:
        pass
    names = list(dict.fromkeys(n.lower() for n in names))
    names += [f"object {i:03d}" for i in range(max(0, n - len(names)))]
    return names[:n]


def add_class_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int, nargs="+", help="class-list mode: these class counts (module doc)")
    parser.add_argument(
        "--min-size", type=int, default=800, help="class mode: shorter image side for both models (default 800)"
    )
    parser.add_argument(
        "--prompts-per-pass", type=int, help="class mode: glip's Predictor(prompts_per_pass=...) (default its own)"
    )
    parser.add_argument("--_classes_one", help=argparse.SUPPRESS)


def _glip_runner(setting: str, args: argparse.Namespace):
    from dataclasses import replace

    from glip.api import Predictor

    kwargs = {} if args.prompts_per_pass is None else {"prompts_per_pass": args.prompts_per_pass}
    backend = bp.BACKEND_SETTINGS.get(setting, "torch")
    predictor = Predictor(args._folder, device=args.device, batch_size=1, backend=backend, **kwargs)
    prep = predictor.model.preprocessing
    predictor.model.preprocessing = replace(prep, min_size=args.min_size, max_size=round(1333 * args.min_size / 800))

    def prepare(names):
        t0 = time.perf_counter()
        encoded = predictor.encode_prompt(names)
        return encoded, len(encoded.chunks), time.perf_counter() - t0

    return prepare, lambda image, encoded: predictor.predict(image, encoded, threshold=0.5)


def _gdino_runner(args: argparse.Namespace):
    import torch

    from glip.api import chunk_prompt
    from glip.text import parse_prompt

    size = {"shortest_edge": args.min_size, "longest_edge": round(1333 * args.min_size / 800)}
    model, tokenizer, processor = bp.build_gdino(args.device, size)

    def prepare(names):  # prompts of <= 256 tokens (the model's max_text_len), names in order
        prompts = chunk_prompt(parse_prompt(names), tokenizer, 256, max_phrases=len(names) + 1, chunk_size=None)
        captions = [p.caption + "." for p in prompts]
        return captions, len(captions), 0.0

    @torch.no_grad()
    def call(image, captions):
        out = []
        for caption in captions:  # one forward per prompt
            inputs = processor(images=[image], text=[caption], return_tensors="pt").to(args.device)
            outputs = model(**inputs)
            out += processor.post_process_grounded_object_detection(
                outputs, inputs.input_ids, threshold=0.5, text_threshold=0.25, target_sizes=[image.shape[:2]]
            )
        return out

    return prepare, call


def run_classes(args: argparse.Namespace) -> list[dict]:
    """One setting (``args._classes_one``), every class count: the rows."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setting = args._classes_one
    prepare, call = _gdino_runner(args) if setting == "gdino" else _glip_runner(setting, args)
    image, _ = bp._image()
    t0 = time.perf_counter()
    call(image, prepare(class_names(1))[0])  # warm-up (ONNX Runtime: the export and session start)
    first = time.perf_counter() - t0
    rows = []
    for n in args.classes:
        prompt, chunks, text_s = prepare(class_names(n))
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            call(image, prompt)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "setting": setting,
                "classes": n,
                "prompts": chunks,
                "text_once_s": round(text_s, 3),
                "runs_s": [round(t, 3) for t in times],
                "s_per_image": statistics.median(times),
                "first_call_s": round(first, 3),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress, row by row
    return rows


def main_classes(args: argparse.Namespace) -> None:
    import torch

    print(
        f"torch {torch.__version__} | CPU {bp._cpu_model()} ({os.cpu_count()} logical) | {args.threads} threads | "
        f"classes {args.classes} | shorter side {args.min_size} | {args.runs} timed calls per count",
        flush=True,
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(bp.REPO), env.get("PYTHONPATH", "")])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_classes_") as tmp:
        folder = Path(args.glip_folder) if args.glip_folder else Path(tmp) / "glip-t"
        if any(s != "gdino" for s in args.settings) and not args.glip_folder:
            script = str(Path(bp.__file__).resolve())
            subprocess.run([sys.executable, script, "--_save", str(folder)], check=True, env=env)
        for setting in args.settings:  # one at a time: the latencies are comparable
            cmd = [
                sys.executable,
                str(Path(bp.__file__).resolve()),
                "--_classes_one",
                setting,
                "--_folder",
                str(folder),
            ]
            cmd += ["--classes", *map(str, args.classes), "--runs", str(args.runs), "--threads", str(args.threads)]
            cmd += ["--device", args.device, "--min-size", str(args.min_size)]
            if args.prompts_per_pass is not None:
                cmd += ["--prompts-per-pass", str(args.prompts_per_pass)]
            # stdout carries the rows; stderr (each row as it is measured) passes through.
            res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=dict(env, GLIP_CACHE=str(Path(tmp) / "c")))
            if res.returncode != 0:
                print(f"{setting}: failed (its error is above)", file=sys.stderr, flush=True)
                continue
            for r in json.loads(res.stdout.strip().splitlines()[-1]):
                rows.append(r)
                print(
                    f"{setting:<22} {r['classes']:5d} classes  {r['prompts']:3d} prompts  {r['s_per_image']:8.2f} s/image"
                    f"  (calls {r['runs_s']}; text once {r['text_once_s']:.2f} s)",
                    flush=True,
                )
    peer = {r["classes"]: r["s_per_image"] for r in rows if r["setting"] == "gdino"}
    if peer:
        print("ratios to Grounding DINO-T (seconds per image)")
        for r in rows:
            if r["setting"] != "gdino" and r["classes"] in peer:
                print(f"  {r['setting']:<22} {r['classes']:5d} classes  {r['s_per_image'] / peer[r['classes']]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
