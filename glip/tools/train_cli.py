"""``glip train`` and ``glip data synthetic``: argument parsing and the calls they make."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from typing import Any

from glip.hub.sources import ModelSource
from glip.tools.common import (
    ArgumentParser,
    accept_device_and_quiet,
    add_device_arg,
    add_model_args,
    add_output_arg,
    add_overrides_arg,
    add_quiet_arg,
    check_overrides,
    model_arg,
    parse_device,
    run_command,
)

__all__ = ["add_data_parser", "add_train_parser", "build_train_parser", "device_is_cpu", "run_train", "training_config"]


def _train_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(
        p,
        default_model=None,
        model_help="initial weights: a model-zoo name (default: the config's initialisation)",
        config_help="the run's config: a yaml (ours or official) or a zoo config name (glip-t...); default: the "
        "one --model / --weights carry",
    )
    add_output_arg(p, required=True, help="checkpoints, metrics.jsonl, config.yaml and the final model")
    p.add_argument(
        "--data",
        help="a dataset folder: a Roboflow/ODinW export (train/, valid/, test/ each with _annotations.coco.json) "
        "or what `glip data synthetic` writes (train.json, val.json, images/); sets data.train_* and data.val_*",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint (if there is one)")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint folder")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (checkpointed); the schedule is unchanged")
    add_device_arg(p, help="cpu or cuda (default: cuda when available; several GPUs: accelerate launch)")
    add_quiet_arg(p)
    add_overrides_arg(p)


def training_config(args: argparse.Namespace) -> Any:
    """The run's :class:`GLIPConfig`: ``--config`` (a yaml or a zoo config name), else the
    one ``--model`` / ``--weights`` carry; then ``--data``, ``--text-encoder`` and the
    overrides (checked against the schema; ``solver.max_iter`` alone replaces an epoch count,
    :func:`glip.config.io.explicit_length`)."""
    from glip.config.io import explicit_length
    from glip.data.layout import read_dataset_dir
    from glip.hub.sources import resolve_config, resolve_model_source

    check_overrides(args.overrides)
    weights = model_arg(args)
    if weights is not None:
        source = resolve_model_source(weights, args.config, text_encoder=args.text_encoder)
    elif args.config:
        config = resolve_config(args.config)
        source = ModelSource(config, config)  # no weights: the config alone
    else:
        raise ValueError("give --config (a yaml or a zoo config name), or --model / --weights carrying one")
    extra = []
    if args.data:
        layout = read_dataset_dir(args.data)
        extra += [f"data.train_json={layout.train.json}", f"data.train_images={layout.train.images}"]
        if layout.val is not None:
            extra += [f"data.val_json={layout.val.json}", f"data.val_images={layout.val.images}"]
    if args.text_encoder:
        extra.append(f"model.text.encoder={args.text_encoder}")
    return source.load_config([*extra, *explicit_length(args.overrides)])


def run_train(args: argparse.Namespace) -> int:
    """Runs :func:`glip.engine.train`; exit status 0, or 128 + signal when interrupted
    (the checkpoint is written first)."""
    import logging

    from glip.engine import train

    if args.resume and args.resume_from:
        raise ValueError("give --resume (OUT's last checkpoint) or --resume-from CHECKPOINT, not both")
    cfg = training_config(args)
    cpu = device_is_cpu(args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(
        cfg,
        args.out,
        weights=model_arg(args),
        resume=args.resume_from or args.resume,
        max_steps=args.max_steps,
        cpu=cpu,
        progress_bar=not args.quiet,
        trust_pickle=args.trust_pickle,
    )
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        print(
            f"interrupted by {name} at step {result.progress.step}: checkpoint {result.checkpoint}; to continue, run "
            "the same command with --resume"
        )
        return 128 + int(result.interrupted_by)
    if result.already_finished:
        print(f"already finished at step {result.progress.step}: nothing to do ({args.out}/model)")
        return 0
    print(f"step {result.progress.step}: checkpoint {result.checkpoint}")
    return 0


def device_is_cpu(device: str | None) -> bool | None:
    """``--device`` of a training command -> ``cpu=`` of :func:`glip.engine.train`
    (``cuda:N`` is refused: one process uses the first visible GPU; pick it with
    ``CUDA_VISIBLE_DEVICES``, or use ``accelerate launch`` for several)."""
    if device is None:
        return None
    parse_device(device)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: training takes cpu or cuda (select GPUs with CUDA_VISIBLE_DEVICES)")
    return device == "cpu"


def build_train_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m glip.train`` (same arguments as ``glip train``)."""
    p = ArgumentParser(
        prog="glip.train",
        description="Train GLIP. Launch with `accelerate launch -m glip.train ...` or `torchrun -m glip.train ...` "
        "for several processes or machines.",
    )
    _train_arguments(p)
    return p


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune GLIP on COCO-format data",
        description="Train GLIP on COCO-format data (--data DIR, or data.* overrides). One process here; for "
        "several GPUs or machines use `accelerate launch -m glip.train` with the same arguments. Writes "
        "OUT/config.yaml, metrics.jsonl, tensorboard/, checkpoints/ and, at the end, model/ (+ model_ema/).",
        epilog="example: glip train --config configs/synthetic/tiny.yaml --data shapes --out runs/tiny "
        "solver.max_iter=500",
    )
    _train_arguments(p)
    p.set_defaults(func=run_train)
    return p


def _run_synthetic(args: argparse.Namespace) -> int:
    from glip.data import generate_synthetic

    ds = generate_synthetic(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size if args.max_image_size is None else (args.image_size, args.max_image_size),
        seed=args.seed,
        held_out=args.held_out,
    )
    print(f"wrote {ds.train_json}, {ds.val_json} and {ds.image_dir}/ ({len(ds.categories)} categories)")
    # The other tasks' files about the same images (see glip.data.synthetic.generate_synthetic).
    extra = (
        "phrasecut_val.json", "vqa_train.json", "vqa_val.json", "captions_train.json", "captions_val.json",
        "grounding_train.json", "grounding_val.json",
    )  # fmt: skip
    print("and " + ", ".join(n for n in extra if (ds.root / n).is_file()) + f" in {ds.root}")
    if ds.held_out:
        print("held out of training: " + ", ".join(ds.held_out))
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="dataset utilities", description="Dataset utilities.")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = sub.add_parser(
        "synthetic",
        help="write a synthetic shapes dataset (COCO jsons + PNGs)",
        description="Coloured shapes on noisy backgrounds: OUT/train.json, OUT/val.json, OUT/images/. "
        "Train on it with data.train_json=OUT/train.json data.train_images=OUT/images.",
    )
    add_output_arg(s, required=True)
    s.add_argument("--num-train", type=int, default=160)
    s.add_argument("--num-val", type=int, default=40)
    s.add_argument("--image-size", type=int, default=128, help="side (or the minimum side with --max-image-size)")
    s.add_argument("--max-image-size", type=int, help="draw each side in [image-size, max-image-size]")
    s.add_argument("--held-out", type=int, default=0, help="colour-shape combinations kept out of training")
    s.add_argument("--seed", type=int, default=0)
    accept_device_and_quiet(s)  # CPU work, no progress bar
    s.set_defaults(func=_run_synthetic)
    s = sub.add_parser(
        "shards",
        help="convert a dataset to streamed tar shards (data.train_shards)",
        description="Write ANN and its images as tar shards of image + json record (glip.data.shards) with "
        "OUT/manifest.json. Train on them with data.train_shards=OUT.",
        epilog="example: glip data shards --from mdetr final_mixed_train.json --images gqa/images --out goldg-shards",
    )
    s.add_argument("annotations", metavar="ANN", help="the dataset file (json, or jsonl for odvg)")
    s.add_argument("--from", dest="source", required=True, choices=["coco", "mdetr", "odvg", "vqa", "captions"])
    s.add_argument("--images", required=True, help="the folder the file's image names are relative to")
    s.add_argument("--label-map", help="odvg detection: the label map json ({label: name})")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="seed of the written sample order")
    add_output_arg(s, required=True)
    accept_device_and_quiet(s)  # CPU work, no progress bar
    s.set_defaults(func=_run_shards)
    s = sub.add_parser(
        "odvg",
        help="write a shard set as ODVG jsonl",
        description="Write a detection or grounding shard set as ODVG jsonl (Open-GroundingDino / "
        "MM-Grounding-DINO), with OUT_label_map.json for detection.",
    )
    s.add_argument("shards", help="shard folder, manifest or glob")
    add_output_arg(s, required=True, help="the jsonl to write")
    accept_device_and_quiet(s)  # CPU work, no progress bar
    s.set_defaults(func=_run_odvg)
    return p


def _run_shards(args: argparse.Namespace) -> int:
    from glip.data.shards.convert import convert

    m = convert(args.source, args.annotations, args.images, args.out, args.shard_size, args.seed, args.label_map)
    print(f"wrote {m.num_samples} samples in {len(m.shards)} shards and {m.root}/manifest.json ({m.kind})")
    return 0


def _run_odvg(args: argparse.Namespace) -> int:
    from glip.data.shards.odvg import write_odvg

    out, label_map = write_odvg(args.shards, args.out)
    print(f"wrote {out}" + (f" and {label_map}" if label_map else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glip.train``: the parser of ``glip train``, the CLI's error handling."""
    return run_command(run_train, build_train_parser().parse_args(argv), "train")
