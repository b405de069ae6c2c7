"""Fine-tuning for GLIPv2's understanding tasks: VQA and captioning (``glip finetune --task``).

A base model (zoo name, folder or official ``.pth``; or the config's initialisation)
gets the task's head (starting fresh when the base has none), trains on the task's
training json with the config's solver, and is tested at the end with the task's metric:
the official VQA accuracy (:func:`glip.tools.vqa_cli.evaluate_vqa`) or the caption
scores with CIDEr (:func:`glip.tools.caption_cli.evaluate_caption_model`). What trains is a
transfer mode as in :mod:`glip.tools.finetune`: by default what the config trains (the
pretrained text encoder stays frozen when ``model.text.freeze``), ``full`` (everything),
or ``head`` (the task's head alone, the :class:`TuningMode` named after the task).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip.config import GLIPConfig
from glip.config.io import config_from_dict, config_to_dict, explicit_length
from glip.evaluation import write_json

__all__ = ["TASKS", "TaskData", "finetune_task", "task_overrides"]

logger = logging.getLogger(__name__)

# task -> (training json, validation json) as `glip data synthetic` writes them beside train.json.
TASKS = {"vqa": ("vqa_train.json", "vqa_val.json"), "caption": ("captions_train.json", "captions_val.json")}
# task -> the key of its headline metric in the returned summary.
TASK_METRIC = {"vqa": "accuracy", "caption": "CIDEr"}
# --mode of a task run -> train.tuning ("": the config's own freezing).
_MODES = {"": "", "full": "full", "head": None}


@dataclass(frozen=True)
class TaskData:
    """The files of one task: training and test jsons (VQAv2 / combined or GQA questions;
    COCO-captions) and the image folder their ``file_name`` entries are relative to."""

    task: str
    name: str
    train_json: Path
    val_json: Path
    images: Path

    @staticmethod
    def from_dir(task: str, root: str | Path) -> TaskData:
        """The ``glip data synthetic`` layout: ``ROOT/vqa_train.json`` and ``vqa_val.json``
        (``captions_*.json`` for captions) beside ``ROOT/images``."""
        _check_task(task)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        train, val = (root / f for f in TASKS[task])
        return TaskData.from_files(task, train, val, root / "images", name=root.name)

    @staticmethod
    def from_files(
        task: str, train_json: str | Path, val_json: str | Path, images: str | Path, name: str | None = None
    ) -> TaskData:
        """Explicit files; each must exist."""
        _check_task(task)
        for path in (train_json, val_json):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{task} annotation file not found: {path}")
        if not Path(images).is_dir():
            raise FileNotFoundError(f"image folder not found: {images}")
        return TaskData(task, name or Path(train_json).stem, Path(train_json), Path(val_json), Path(images))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected {', '.join(TASKS)})")


def _vqa_format(path: Path) -> str:
    """``vqa`` for a VQAv2 / combined json (``questions`` or ``annotations``), else ``gqa``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a json file ({e})") from None
    return "vqa" if isinstance(data, dict) and ("questions" in data or "annotations" in data) else "gqa"


def task_overrides(data: TaskData, mode: str = "") -> list[str]:
    """The config overrides of a ``data.task`` run in ``mode`` (``""``, ``full`` or ``head``):
    the head on, the data reader, no flip (left/right answers and captions)."""
    if mode not in _MODES:
        raise ValueError(f"--mode for --task {data.task} must be full or head (or none: what the config trains)")
    tuning = data.task if mode == "head" else _MODES[mode]
    fmt = _vqa_format(data.train_json) if data.task == "vqa" else "captions"
    values = {
        f"model.heads.{data.task}.enabled": "true",
        "data.format": fmt,
        "data.flip_prob": 0.0,
    }
    if tuning:
        values["train.tuning"] = tuning
    if data.task == "caption":
        values["train.find_unused_parameters"] = "true"  # caption batches do not reach the grounding head
    return [f"{k}={v}" for k, v in values.items()]


def finetune_task(
    cfg: GLIPConfig,
    data: TaskData,
    out_dir: str | Path,
    *,
    weights: str | Path | None,
    mode: str = "",
    overrides: Sequence[str] = (),
    keep_checkpoints: bool = False,
    progress_bar: bool = False,
    cpu: bool | None = None,
    trust_pickle: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tunes ``weights`` on ``data``'s training json and tests it on its validation json.

    Writes ``out_dir/model`` (the whole model, its head included), ``metrics.jsonl``,
    ``eval/results.json`` and ``eval/metrics.json`` (the task's evaluator) and
    ``metrics.json`` (the summary returned).

    Args:
        cfg: the base model's config (``--config``, else the one the weights carry).
        weights: the base model; None: train from the config's initialisation.
        mode: ``""`` (what the config trains), ``full`` or ``head`` (:func:`task_overrides`).
        overrides: ``key=value`` config overrides applied last (``solver.max_iter=...``).
        resume: continue the run in ``out_dir`` from its last checkpoint.

    Returns:
        the evaluator's metrics plus ``task``, ``dataset``, ``mode``, ``metric`` (the
        headline metric: VQA ``accuracy`` or ``CIDEr``), ``score`` (its value) and ``steps``.
    """
    from glip.engine import TrainingInterrupted, train
    from glip.hub.loading import load_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict(config_to_dict(cfg), [*task_overrides(data, mode), *explicit_length(overrides)])
    if not mode:
        cfg.train.tuning = ""  # what the config trains, whatever the base's own run used
    cfg.data.sources = []  # a multi-task base trains here on this task alone
    cfg.data.train_json, cfg.data.train_images = str(data.train_json), str(data.images)
    cfg.data.val_json = cfg.data.val_images = ""  # tested with the task's metric at the end
    result = train(
        cfg, out, weights=weights, cpu=cpu, progress_bar=progress_bar, trust_pickle=trust_pickle, resume=resume
    )
    if result.interrupted_by is not None:
        raise TrainingInterrupted(result)
    import torch

    device = "cuda" if not cpu and torch.cuda.is_available() else "cpu"
    model = load_model(out / "model", device=device, trust_pickle=trust_pickle)
    if data.task == "vqa":
        from glip.tools.vqa_cli import evaluate_vqa

        metrics = evaluate_vqa(model, data.val_json, data.images, out / "eval", progress=progress_bar)
    else:
        from glip.tools.caption_cli import evaluate_caption_model

        metrics = evaluate_caption_model(
            model, data.val_json, data.images, out / "eval", progress=progress_bar
        ).to_json()
    key = TASK_METRIC[data.task]
    score = metrics.get(key, metrics.get("metrics", {}).get(key))
    summary = {
        **metrics,
        "task": data.task,
        "dataset": data.name,
        "mode": mode or "config",
        "metric": key,
        "score": float(score) if score is not None else float("nan"),
        "steps": result.progress.step,
    }
    if not keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    write_json(out / "metrics.json", summary)
    return summary
