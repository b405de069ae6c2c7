"""``glip pseudo-label``: ground the noun phrases of image captions with a teacher and write
MDETR-style grounding data (:mod:`glip.tools.pseudo_label`), or label caption tar shards
(img2dataset's output) into training shards (:mod:`glip.tools.pseudo_label_shards`), on one
process or many."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from glip.tools.common import (
    add_device_arg,
    add_model_args,
    add_output_arg,
    add_quiet_arg,
    add_threshold_arg,
    model_arg,
    parse_device,
)

__all__ = ["add_pseudo_label_parser"]

EPILOG = """examples:
  glip pseudo-label --captions captions_train.json --images images --model glip-t --out pseudo.json
  accelerate launch --num_processes 8 -m glip.cli pseudo-label --captions cc3m.json --images cc3m \\
      --model glip-l --out cc3m_pseudo.json
  glip pseudo-label --captions c.json --images imgs --out p.json --num-shards 4 --shard-index 2   (one of 4 jobs)
  glip pseudo-label --captions c.json --out p.json --merge                 (merge the finished shards)
  glip pseudo-label --shards cc3m_img2dataset/ --model glip-t --out cc3m_pseudo/   (tar shards in and out)
  glip pseudo-label --captions c.json --images imgs --out p.json --teacher clip --clip-model clip-vit-b32/
  glip pseudo-label --captions c.json --images imgs --out p.json --teacher clip \
      --clip-model open_clip:ViT-B-32 --clip-pretrained laion2b_s34b_b79k       (an open_clip model)

An interrupted run resumes where it stopped when started again with the same options; the
labelled parts live in OUT.shards/ (--parts). Train on the result with data.format=mdetr.
With --shards, each input tar shard becomes a labelled shard of the same name in OUT (a
finished one is skipped on resume) and OUT/manifest.json is written when all are done:
train on it with data.train_shards=OUT."""


def add_pseudo_label_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``pseudo-label`` on the ``glip`` command's subparsers."""
    p = subparsers.add_parser(
        "pseudo-label",
        help="ground the noun phrases of image captions with a teacher model (sharded, resumable)",
        description="Pseudo-label a COCO-captions json: find each caption's noun phrases, ground them with a GLIP "
        "teacher (or score detector regions with CLIP, --teacher clip) and write MDETR-style grounding json "
        "(each caption an image record, each box with tokens_positive and score) that glip train reads with "
        "data.format=mdetr. With --shards, caption tar shards (img2dataset's output) are labelled into "
        "training shards instead (data.train_shards). Under `accelerate launch` the work is split over the "
        "processes; a bad image is logged and skipped.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--captions", help="COCO-captions json (images + annotations with caption)")
    p.add_argument("--images", help="folder of the images' file_name (not needed with --merge)")
    p.add_argument(
        "--shards",
        help="instead of --captions/--images: caption tar shards (img2dataset's output: {key}.jpg, {key}.txt, "
        "{key}.json; or a glip shard set), as a folder, a glob or one .tar; OUT is then a folder of labelled "
        "shards, one per input shard",
    )  # fmt: skip
    add_threshold_arg(p, default=0.5, help="keep boxes scoring above this (default 0.5)")
    p.add_argument(
        "--nms", type=float, default=-1.0,
        help="class-agnostic NMS IoU over a caption's boxes, as the official CAPTION_NMS (default -1: none, "
        "as the official GLIP-L pre-training)",
    )  # fmt: skip
    p.add_argument("--min-boxes", type=int, default=1, help="leave out captions with fewer boxes (default 1)")
    p.add_argument("--teacher", choices=("glip", "clip"), default="glip", help="default glip")
    p.add_argument(
        "--chunker", choices=("offline", "spacy"), default="offline",
        help="noun phrases: the built-in rule-based chunker (default) or spaCy's noun chunks (needs spaCy "
        "and en_core_web_sm)",
    )  # fmt: skip
    g = p.add_argument_group("clip teacher")
    g.add_argument(
        "--clip-model",
        help="the CLIP that scores the regions: a transformers CLIP folder (or cached hub name); open_clip:NAME "
        "(a built-in open_clip architecture with --clip-pretrained, open_clip:hf-hub:ORG/REPO cached, "
        "open_clip:local-dir:FOLDER); or a folder holding open_clip_config.json",
    )  # fmt: skip
    g.add_argument("--clip-pretrained", help="open_clip weights: a pretrained tag (cached) or a checkpoint file")
    g.add_argument("--boxes", help="regions from this json (COCO results: image_id, bbox xywh) instead of GLIP")
    g.add_argument(
        "--proposal-threshold", type=float, default=0.1, help="GLIP regions: boxes scoring above this (default 0.1)"
    )
    g.add_argument("--proposal-nms", type=float, default=0.5, help="GLIP regions: class-agnostic NMS IoU (0.5)")
    g.add_argument(
        "--clip-background", type=int, default=50,
        help="background concepts: the N most frequent phrases of the captions file (default 50)",
    )  # fmt: skip
    g.add_argument("--clip-template", default="a photo of {}.", help='text for CLIP (default "a photo of {}.")')
    g = p.add_argument_group("sharding")
    g.add_argument("--parts", help="--captions: folder of the labelled parts and settings (default OUT.shards)")
    g.add_argument("--chunk-size", type=int, default=64, help="--captions: images per part written (default 64)")
    g.add_argument("--num-shards", type=int, help="run one of N independent jobs (with --shard-index)")
    g.add_argument("--shard-index", type=int, help="which of the --num-shards jobs this is (0-based)")
    g.add_argument("--max-images", type=int, help="stop after labelling this many images (resume later)")
    g.add_argument("--merge", action="store_true", help="only merge finished shards into OUT")
    add_output_arg(p, required=True, help="the merged grounding json (--shards: the folder of labelled shards)")
    add_device_arg(p)
    add_quiet_arg(p)
    add_model_args(p, model_help="GLIP teacher (a zoo name, see `glip models`; default glip-t); with "
                   "--teacher clip it proposes the regions")  # fmt: skip
    p.set_defaults(func=_cmd_pseudo_label)
    return p


def _check(args: argparse.Namespace) -> None:
    if (args.captions is None) == (args.shards is None):
        raise ValueError("give the captions to label: --captions FILE (with --images) or --shards TARS")
    if args.shards is not None:
        given = [n for n in ("images", "parts", "max_images", "boxes") if getattr(args, n) is not None]
        given += ["merge"] if args.merge else []
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} goes with --captions, not --shards")
    for name in ("threshold", "proposal_threshold"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    for name in ("nms", "proposal_nms"):
        if getattr(args, name) > 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be at most 1, got {getattr(args, name)}")
    if args.min_boxes < 0 or args.chunk_size < 1 or args.clip_background < 0:
        raise ValueError("--min-boxes and --clip-background must be >= 0, --chunk-size >= 1")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {args.max_images}")
    if (args.num_shards is None) != (args.shard_index is None):
        raise ValueError("--num-shards and --shard-index go together")
    if args.num_shards is not None and not 0 <= args.shard_index < args.num_shards:
        raise ValueError(f"--shard-index must be in [0, {args.num_shards}), got {args.shard_index}")
    if args.teacher == "clip" and not args.clip_model:
        raise ValueError("--teacher clip needs --clip-model (a transformers CLIP folder or open_clip:NAME)")


def _process_group(args: argparse.Namespace) -> tuple[int, int, Callable[[], None] | None, Any]:
    """(shard index, shard count, barrier or None, default device) of this process."""
    if args.num_shards is not None:
        return args.shard_index, args.num_shards, None, None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        import torch
        from accelerate import PartialState

        # Without cpu=True accelerate treats CPU processes as one (no gloo group).
        state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
        return state.process_index, state.num_processes, state.wait_for_everyone, state.device
    return 0, 1, None, None


def _settings(args: argparse.Namespace, digest: str, count: int) -> Any:
    """The settings a resumed run must repeat; ``digest`` and ``count`` name the input (the
    captions json's sha256 and captioned images; with --shards, :func:`input_digest` of the
    input shards and their number)."""
    from glip.tools.pseudo_label import PseudoLabelSettings

    model: dict[str, Any] = {"model": model_arg(args), "config": args.config}
    if args.teacher == "clip":
        model.update(
            clip_model=args.clip_model, boxes=args.boxes, proposal_threshold=args.proposal_threshold,
            proposal_nms=args.proposal_nms, clip_background=args.clip_background, clip_template=args.clip_template,
        )  # fmt: skip
        if args.boxes:
            model.update(model=None, config=None, proposal_threshold=None, proposal_nms=None)
        if args.clip_pretrained:  # recorded only when given: shard folders of earlier versions still resume
            model.update(clip_pretrained=args.clip_pretrained)
    return PseudoLabelSettings(
        digest, count, args.threshold, args.nms, args.min_boxes, args.teacher,
        args.chunker, model,
    )  # fmt: skip


def _teacher(args: argparse.Namespace, device: Any, chunker: Any, captions: Callable[[], Iterable[str]]) -> Any:
    """The teacher of ``args``; ``captions()``: the captions whose frequent phrases are the
    CLIP teacher's background concepts."""
    from glip.api import Predictor
    from glip.tools.teachers import GlipTeacher

    def glip(threshold: float) -> GlipTeacher:
        predictor = Predictor(
            model_arg(args), config=args.config, text_encoder=args.text_encoder, device=device,
            trust_pickle=args.trust_pickle,
        )  # fmt: skip
        return GlipTeacher(predictor, threshold)

    if args.teacher == "glip":
        return glip(args.threshold)
    from glip.tools.clip_teacher import BoxFileProposals, ClipScorer, ClipTeacher, GlipProposals, frequent_phrases

    proposals = BoxFileProposals(args.boxes) if args.boxes else GlipProposals(glip(args.proposal_threshold),
                                                                              args.proposal_nms)  # fmt: skip
    scorer = ClipScorer.load(args.clip_model, args.clip_pretrained, device or "cpu")
    background = frequent_phrases(captions(), chunker, args.clip_background)
    return ClipTeacher(scorer, proposals, args.threshold, background, args.clip_template)


def _merge(items: list[Any], store: Any, out: str, asked: bool = False) -> int:
    """Merges when every image is done; else says what is left (an error when ``asked``)."""
    from glip.tools.pseudo_label import merge_shards

    done = store.read_entries()
    left = sum(it.index not in done for it in items)
    if left and asked:
        merge_shards(items, store, out)  # raises the one-line error naming what is missing
    if left:
        print(f"{left} of {len(items)} images are still to label: run the same command again to continue")
        return 0
    summary = merge_shards(items, store, out)
    print(
        f"wrote {summary.path}: {summary.captions} captions with {summary.boxes} boxes "
        f"({summary.dropped_captions} captions with too few boxes left out)"
    )
    if summary.failed:
        first = summary.failed[0]
        print(
            f"glip pseudo-label: {len(summary.failed)} images could not be labelled, e.g. {first['file_name']}: "
            f"{first['error']} (listed under pseudo_label.failed_images)",
            file=sys.stderr,
        )
    return 0


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    from glip.tools.pseudo_label import ShardStore, default_shard_dir, file_digest, label_images, read_caption_items
    from glip.tools.teachers import build_chunker

    _check(args)
    if args.shards is not None:
        return _label_shards(args)
    items = read_caption_items(args.captions)  # a bad file fails before a model is loaded
    store = ShardStore(args.parts or default_shard_dir(args.out))
    if args.merge:
        return _merge(items, store, args.out, asked=True)
    if not args.images:
        raise ValueError("--images is required to label (the folder of the json's file_name)")
    if not Path(args.images).is_dir():
        raise FileNotFoundError(f"image folder not found: {args.images}")
    shard, num_shards, barrier, default_device = _process_group(args)
    settings = _settings(args, file_digest(args.captions), len(items))
    store.check_settings(settings)  # before the teacher is loaded
    chunker = build_chunker(args.chunker)
    device = parse_device(args.device) or default_device
    teacher = _teacher(args, device, chunker, lambda: (c for it in items for c in it.captions))
    summary = label_images(
        items, args.images, teacher, chunker, store, settings, shard_index=shard, num_shards=num_shards,
        chunk_size=args.chunk_size, max_images=args.max_images, progress=not args.quiet,
    )  # fmt: skip
    print(
        f"shard {shard + 1}/{num_shards}: labelled {summary.labelled} images ({summary.failed} failed), "
        f"{summary.already_done} were done already" + (f", {summary.remaining} left" if summary.remaining else "")
    )
    if barrier is not None:
        barrier()
        return _merge(items, store, args.out) if shard == 0 else 0
    if num_shards > 1:  # independent jobs: whoever finds every shard done merges
        done = store.read_entries()
        if any(it.index not in done for it in items):
            print("other shards are still running: merge with --merge when they are done")
            return 0
    return _merge(items, store, args.out)


def _label_shards(args: argparse.Namespace) -> int:
    """``--shards IN --out OUT``: this process's input shards labelled into OUT, then the
    manifest once every shard is done (see :mod:`glip.tools.pseudo_label_shards`)."""
    from glip.tools import pseudo_label_shards as pls
    from glip.tools.pseudo_label import ShardStore
    from glip.tools.teachers import build_chunker

    inputs = pls.input_shards(args.shards)
    out = Path(args.out)
    if out.resolve() in {p.parent.resolve() for p in inputs}:
        raise ValueError(f"--out {out} holds the input shards: write the labelled shards to another folder")
    shard, num_shards, barrier, default_device = _process_group(args)
    settings = _settings(args, pls.input_digest(inputs), len(inputs))
    store = ShardStore(out)
    store.check_settings(settings)  # before the teacher is loaded
    chunker = build_chunker(args.chunker)
    device = parse_device(args.device) or default_device
    # The CLIP teacher's background concepts: the frequent phrases of the first input shard.
    teacher = _teacher(args, device, chunker, lambda: pls.shard_captions(inputs[0]))
    summary = pls.label_shards(
        inputs, out, teacher, chunker, store, settings, shard_index=shard, num_shards=num_shards,
        progress=not args.quiet,
    )  # fmt: skip
    print(
        f"process {shard + 1}/{num_shards}: labelled {summary.labelled} shards ({summary.samples} samples written "
        f"of {summary.read} read; {summary.corrupt} unreadable, {summary.failed} failed, {summary.dropped} captions "
        f"with too few boxes), {summary.already_done} were done already"
    )
    if barrier is not None:
        barrier()
    if summary.unreadable:
        more = f" (and {len(summary.unreadable) - 1} more)" if len(summary.unreadable) > 1 else ""
        raise ValueError(f"{summary.unreadable[0]}{more}: the other shards are labelled; fix or remove it and rerun")
    if barrier is not None and shard != 0:
        return 0
    manifest = pls.write_output_manifest(inputs, out)
    if manifest is None:
        print("other input shards are still to label: run the same command again (or wait for the other jobs)")
        return 0
    totals = pls.output_totals(inputs, out)
    print(
        f"wrote {out / 'manifest.json'}: {len(manifest.shards)} shards, {manifest.num_samples} samples "
        f"({totals['corrupt']} unreadable and {totals['failed']} failed input samples skipped); "
        f"train with data.train_shards={out}"
    )
    return 0
