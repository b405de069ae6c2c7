"""``glip caption`` (grounded captions of images) and ``glip evaluate --task caption``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from glip.modeling.heads.caption import RERANKERS
from glip.tools.common import (
    add_device_arg,
    add_model_args,
    add_output_arg,
    add_quiet_arg,
    add_threshold_arg,
    check_threshold,
    model_arg,
    parse_device,
)
from glip.utils.fs import atomic_write_text

__all__ = ["add_caption_parser", "caption_files", "evaluate_captioning", "evaluate_caption_model"]

EPILOG = """examples:
  glip caption shapes/images/val_00000.png --weights runs/caption/model
  glip caption photos/ --weights runs/caption/model --beam 3 --max-length 20 --out captions
  glip evaluate --task caption --ann shapes/captions_val.json --images shapes/images --weights runs/caption/model"""


def add_caption_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``caption`` on the ``glip`` command's subparsers."""
    p = subparsers.add_parser(
        "caption",
        help="caption images and ground the captions' noun phrases (models with a caption head)",
        description="Caption images, folders or globs with a model that has a caption head (GLIPv2 captioning), "
        "and ground each caption's noun phrases with its grounding head. Prints one line per image and writes "
        "OUT/captions.json. Exit status 1 when any input failed (the others are still processed).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR_OR_GLOB")
    p.add_argument("--beam", type=int, help="beam size (1 = greedy; default: the model's, 1)")
    p.add_argument(
        "--rerank",
        choices=RERANKERS,
        help="how the beam's captions are chosen: the likeliest (none), the one whose noun phrases the model "
        "grounds best with the caption as the prompt (grounding), or with all the captions' phrases in one "
        "prompt (contrastive) (default: the model's)",
    )
    p.add_argument("--max-length", type=int, help="most generated tokens, the end token counted (default: the model's)")
    add_threshold_arg(
        p, default=None, help="least score of a phrase's box (default: the model's)", aliases=("--box-threshold",)
    )
    add_device_arg(p)
    add_output_arg(p, default=None, help="folder for captions.json (default: print only)")
    add_quiet_arg(p)
    add_model_args(p, default_model="demo-shapes")
    p.set_defaults(func=_cmd_caption)
    return p


def _load(args: argparse.Namespace) -> Any:
    from glip.api import resolve_model
    from glip.modeling.caption_decoding import require_caption_head

    model = resolve_model(
        model_arg(args), config=args.config, text_encoder=args.text_encoder, device=parse_device(args.device),
        trust_pickle=args.trust_pickle,
    )  # fmt: skip
    require_caption_head(model)  # one line naming the model
    return model


def _check_decoding(args: argparse.Namespace) -> None:
    if args.beam is not None and args.beam < 1:
        raise ValueError(f"--beam must be at least 1, got {args.beam}")
    if args.max_length is not None and args.max_length < 1:
        raise ValueError(f"--max-length must be at least 1, got {args.max_length}")
    check_threshold(args.threshold)


def caption_files(
    model: Any,
    files: list[str],
    *,
    beam_size: int | None = None,
    max_length: int | None = None,
    box_threshold: float | None = None,
    rerank: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One JSON entry per file: ``{"file", "caption", "phrases": [{"phrase", "box", "score"}]}``,
    or ``{"file", "error"}`` for a file that could not be read (the others go on)."""
    from glip.captioning import caption_image
    from glip.utils.image import ImageLoadError

    bar = None
    if progress and len(files) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", desc="caption", file=sys.stderr)
    entries: list[dict[str, Any]] = []
    for file in files:
        try:
            cap = caption_image(
                model, file, beam_size=beam_size, max_length=max_length, box_threshold=box_threshold, rerank=rerank
            )
        except (ImageLoadError, OSError) as e:
            entries.append({"file": file, "error": str(e)})
        else:
            phrases = [
                {"phrase": p, "box": [round(float(v), 2) for v in b.tolist()], "score": round(float(s), 4)}
                for p, b, s in zip(cap.phrases, cap.boxes, cap.scores)
            ]
            entries.append({"file": file, "caption": cap.text, "phrases": phrases})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return entries


def _cmd_caption(args: argparse.Namespace) -> int:
    from glip.tools.detect import expand_inputs

    _check_decoding(args)
    files = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError(f"no image found in {' '.join(args.inputs)}")
    model = _load(args)
    entries = caption_files(
        model, files, beam_size=args.beam, max_length=args.max_length, box_threshold=args.threshold,
        rerank=args.rerank, progress=not args.quiet,
    )  # fmt: skip
    for e in entries:
        if "error" in e:
            print(f"{e['file']}: error: {e['error']}")
        else:
            grounded = "; ".join(f"{p['phrase']} {p['box']}" for p in e["phrases"])
            print(f"{e['file']}: {e['caption']}" + (f"  [{grounded}]" if grounded else ""))
    if args.out:
        atomic_write_text(Path(args.out) / "captions.json", json.dumps(entries, indent=2))
        print(f"wrote {Path(args.out) / 'captions.json'}")
    failed = sum("error" in e for e in entries)
    if failed:
        print(f"glip caption: {failed} of {len(entries)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def evaluate_caption_model(
    model: Any, ann_file: str | Path, image_dir: str | Path, out_dir: str | Path, progress: bool = True
) -> Any:
    """Captions every image of ``ann_file`` (a COCO-captions json) found in ``image_dir`` and
    scores them (:func:`glip.evaluation.captioning.evaluate_caption_files`). Writes
    ``OUT/results.json`` and ``OUT/metrics.json``; returns the scores (``.metrics``, ``.notes``).
    Without ``progress`` (``--quiet``), nothing else is printed: no bar, no Java tokenizer lines."""
    from glip.data.captions import load_coco_captions
    from glip.evaluation.captioning import evaluate_caption_files

    data = load_coco_captions(ann_file)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    files = [str(image_dir / data.images[i]["file_name"]) for i in data.image_ids]
    entries = caption_files(model, files, progress=progress)
    failed = [e for e in entries if "error" in e]
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(entries)} images failed, e.g. {failed[0]['file']}: {failed[0]['error']}"
        )
    results_file = Path(out_dir) / "results.json"
    results = [{"image_id": i, "caption": e["caption"]} for i, e in zip(data.image_ids, entries)]
    atomic_write_text(results_file, json.dumps(results, indent=2))
    scores = evaluate_caption_files(ann_file, results_file, quiet=not progress)
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(scores.to_json(), indent=2))
    return scores


def evaluate_captioning(args: argparse.Namespace) -> int:
    """``glip evaluate --task caption``: captions every image of ``--ann`` (a COCO-captions json)
    found in ``--images`` (or scores ``--results``), writes ``OUT/results.json`` and
    ``OUT/metrics.json`` (``CIDEr``, ``BLEU-1..4``, ``METEOR``, ``ROUGE-L``; METEOR is skipped
    with a note without Java)."""
    from glip.data.captions import load_coco_captions
    from glip.evaluation.captioning import evaluate_caption_files

    if not args.ann:
        raise ValueError("--task caption needs --ann, a COCO-captions json (images + annotations with captions)")
    load_coco_captions(args.ann)  # checks the layout before a model is loaded
    out = Path(args.out)
    if args.results:
        scores = evaluate_caption_files(args.ann, Path(args.results), quiet=args.quiet)
        atomic_write_text(out / "metrics.json", json.dumps(scores.to_json(), indent=2))
    else:
        if not args.images:
            raise ValueError("--task caption needs --images, the folder of the json's file_name (or --results)")
        if not Path(args.images).is_dir():
            raise FileNotFoundError(f"image folder not found: {args.images}")
        scores = evaluate_caption_model(_load(args), args.ann, args.images, out, progress=not args.quiet)
    for name, value in scores.metrics.items():
        print(f"{name:<8} {value:.4f}")
    for note in scores.notes:
        print(f"note: {note}")
    print(f"wrote {out / 'metrics.json'}")
    return 0
