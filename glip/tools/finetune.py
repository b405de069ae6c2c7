"""Transfer to a new domain: one fine-tuning run (full, linear probing or prompt tuning)
on a k-shot subset, and the dataset x shots x seeds protocol grid with mean +- std AP.

Official counterpart: ``tools/finetune.py`` with the README's ODinW commands:
``--custom_shot_and_epoch_and_general_copy`` ``1_200_8`` / ``3_200_4`` / ``5_200_2`` /
``10_200_1`` (``0_200_1`` for all data), ``SOLVER.IMS_PER_BATCH 4``, ``WEIGHT_DECAY 0.05``,
``USE_AUTOSTEP True``, ``STEP_PATIENCE 3``, ``AUTO_TERMINATE_PATIENCE 8`` (2 and 4 with all
data), ``MODEL_EMA 0``, ``SEED 10``, ``FREEZE_CONV_BODY_AT 2``, evaluation every epoch
(``CHECKPOINT_PER_EPOCH 1.0``), and for prompt tuning ``BASE_LR 0.05`` and
``WEIGHT_DECAY 0.25``. The best validation AP's weights are tested (``model_best``).
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip.config import GLIPConfig
from glip.config.io import config_from_dict, config_to_dict, explicit_length
from glip.data.few_shot import few_shot_subset, instances_per_category, official_few_shot_file
from glip.data.layout import read_dataset_dir
from glip.engine.tuning import PROMPT_TUNING_SOLVER, resolve_tuning_mode
from glip.evaluation import write_json
from glip.evaluation.coco import load_coco_json, load_json
from glip.tools.evaluate import evaluate_detection

__all__ = [
    "SHOT_SCHEDULES",
    "TransferData",
    "finetune",
    "format_grid",
    "run_transfer_grid",
    "shots_label",
    "summarize_grid",
    "transfer_overrides",
]

logger = logging.getLogger(__name__)

# shots -> (epochs, dataset copies): official --custom_shot_and_epoch_and_general_copy.
SHOT_SCHEDULES = {1: (200, 8), 3: (200, 4), 5: (200, 2), 10: (200, 1), 0: (200, 1)}
# shots -> (STEP_PATIENCE, AUTO_TERMINATE_PATIENCE): README, few-shot vs all data.
FEW_SHOT_PATIENCE = (3, 8)
FULL_DATA_PATIENCE = (2, 4)


@dataclass(frozen=True)
class TransferData:
    """A COCO-format target domain.

    Attributes:
        name: a label for tables and output folders.
        train_json, train_images: the full training set (k-shot subsets are drawn from it).
        val_json, val_images: evaluated every epoch for early stopping.
        test_json, test_images: the final AP (default: the validation set).
        categories: ``(id, name)`` names replacing the json's (ODinW ``OVERRIDE_CATEGORY``).
        caption_prompt: ODinW ``CAPTION_PROMPT`` ``(prefix, name, suffix)`` per category.
    """

    name: str
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path
    test_json: Path | None = None
    test_images: Path | None = None
    categories: tuple[tuple[int, str], ...] | None = None
    caption_prompt: tuple[tuple[str, str, str], ...] | None = None

    @staticmethod
    def from_dir(root: str | Path, name: str | None = None) -> TransferData:
        """A dataset folder (:func:`glip.data.read_dataset_dir`): a Roboflow / ODinW export
        (``train/``, ``valid/``, ``test/`` with ``_annotations.coco.json``, images beside)
        or what ``glip data synthetic`` writes (``train.json``, ``val.json``, ``test.json``
        when present, ``images/``). Without a validation split the test split validates."""
        layout = read_dataset_dir(root)
        val = layout.val or layout.test
        if val is None:
            raise FileNotFoundError(f"{root}: a validation split is needed (valid/ or val.json; or test/)")
        test = layout.test
        return TransferData(
            name or layout.name, layout.train.json, layout.train.images, val.json, val.images,
            test.json if test else None, test.images if test else None,
        )  # fmt: skip

    def test_files(self) -> tuple[Path, Path]:
        if self.test_json is not None:
            return self.test_json, self.test_images or self.val_images
        return self.val_json, self.val_images


def transfer_overrides(mode: str, shots: int, solver: bool = True) -> list[str]:
    """The official ODinW fine-tuning settings of ``mode`` with ``shots`` (0: all data), as
    config overrides. ``solver`` False leaves out the ``solver.*`` ones (``glip finetune
    --no-official-schedule``) and keeps the data recipe: one fixed caption of every class
    (no shuffling, no sampled negatives), the prompt a tuned model records."""
    m = resolve_tuning_mode(mode)
    if m is None:
        raise ValueError("a transfer mode is needed (full, linear, prompt...)")
    if shots not in SHOT_SCHEDULES:
        raise ValueError(f"shots must be one of {sorted(SHOT_SCHEDULES)}, got {shots}")
    epochs, copies = SHOT_SCHEDULES[shots]
    step_patience, stop_patience = FEW_SHOT_PATIENCE if shots else FULL_DATA_PATIENCE
    values: dict[str, Any] = {
        "train.tuning": m.name,
        "solver.max_epoch": epochs,
        "data.general_copy": copies,
        "solver.ims_per_batch": 4,
        "solver.weight_decay": 0.05,
        "solver.use_autostep": True,
        "solver.step_patience": step_patience,
        "solver.auto_terminate_patience": stop_patience,
        "solver.model_ema": 0.0,
        "solver.seed": 10,
        "model.backbone.freeze_at": 2,
        "data.shuffle_categories": False,  # official DATASETS.DISABLE_SHUFFLE True
        "data.sample_negatives": False,
    }
    if m.prompt_offset:
        values.update({f"solver.{k}": v for k, v in PROMPT_TUNING_SOLVER.items()})
    return [f"{k}={v}" for k, v in values.items() if solver or not k.startswith("solver.")]


def _official_schedule_line(cfg: GLIPConfig, mode: str, shots: int) -> str:
    """The official ODinW schedule the run follows, and what the overrides replaced in it."""
    epochs, copies = SHOT_SCHEDULES[shots]
    s, d = cfg.solver, cfg.data
    what = f"{shots}-shot" if shots else "all data"
    official = f"{epochs} epochs" + (f" of {copies} copies of the data" if copies > 1 else "")
    if s.max_epoch == epochs and d.general_copy == copies:
        length = official
    elif s.max_epoch > 0:
        length = f"your solver.max_epoch={s.max_epoch}, data.general_copy={d.general_copy} (official: {official})"
    else:
        length = f"your solver.max_iter={s.max_iter} steps (official: {official})"
    stop = f"early stop after {s.auto_terminate_patience} validations without AP gain"
    return (
        f"official ODinW schedule ({mode}, {what}): {length}, batch {s.ims_per_batch}, validation every epoch, "
        f"{stop}; set solver.max_iter=N for N steps, or --no-official-schedule for the config's solver"
    )


def _write_train_subset(data: TransferData, shots: int, seed: int, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The k-shot training json (released file when present, else drawn), with override
    category names applied; written to ``out_dir``."""
    official = official_few_shot_file(data.train_json, shots, seed) if shots else None
    coco = load_coco_json(official or data.train_json, strict_boxes=False)  # the dataset drops bad boxes
    subset = coco if official else few_shot_subset(coco, shots, seed)
    if data.categories:
        names = dict(data.categories)
        subset = dict(
            subset, categories=[dict(c, name=names.get(int(c["id"]), c["name"])) for c in subset["categories"]]
        )
    path = out_dir / f"train_shot{shots}_seed{seed}.json"
    write_json(path, subset)
    return path, subset


def _ap_evaluator(data: TransferData, batch_size: int, masks: bool = False) -> Any:
    """Validation AP for early stopping: box AP, or with ``masks`` mask AP (``segm_AP``)."""
    from glip.api import Predictor

    key = "segm_AP" if masks else "AP"

    def evaluate(model: Any, step: int) -> dict[str, float]:
        metrics = evaluate_detection(
            Predictor(model, batch_size=batch_size, masks=masks), data.val_json, data.val_images,
            override=data.categories, caption_prompt=data.caption_prompt, batch_size=batch_size, progress=False,
            iou_types=("segm",) if masks else ("bbox",),
        )  # fmt: skip
        return {"AP": float(metrics[key]) if metrics else 0.0}

    return evaluate


def finetune(
    cfg: GLIPConfig,
    data: TransferData,
    out_dir: str | Path,
    *,
    weights: str | Path | None,
    mode: str = "prompt",
    shots: int = 0,
    seed: int = 3,
    overrides: Sequence[str] = (),
    official_schedule: bool = True,
    eval_batch_size: int = 4,
    keep_checkpoints: bool = False,
    progress_bar: bool = False,
    cpu: bool | None = None,
    trust_pickle: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Tunes ``weights`` on the ``shots``-shot subset (seed ``seed``) of ``data`` and tests it.

    Writes ``out_dir/model`` (a delta for linear / prompt modes), ``train_shot*.json``,
    ``metrics.jsonl`` and ``metrics.json`` (test AP). Evaluates the validation AP every
    epoch (early stopping, learning-rate plateaus) and tests the best evaluation's weights.
    The ``mask`` mode adds the mask head (starting fresh when ``weights`` has none), trains
    it alone on the data's masks, validates on mask AP and tests box and mask AP
    (``segm_AP``...).

    Args:
        cfg: the model's config (``config.yaml`` of the base folder, or the tiny one...).
        weights: the base model (folder, official ``.pth`` or zoo name); None: train from
            the config's initialisation (the result is then saved whole).
        trust_pickle: allow an official ``.pth`` base that needs unsafe unpickling.
        official_schedule: False keeps the config's solver settings (the official data
            recipe and freezing of :func:`transfer_overrides` still apply, before ``overrides``).
        overrides: ``key=value`` config overrides applied last; a ``solver.max_iter``
            without ``solver.max_epoch`` replaces the official epoch count
            (:func:`glip.config.io.explicit_length`).
        resume: continue the run in ``out_dir`` from its last checkpoint (a run already
            tested returns its ``metrics.json``).

    Returns:
        the test metrics plus ``shots``, ``seed``, ``mode``, ``train_images`` (the subset size),
        ``best_val_AP`` and ``steps``.

    Raises:
        TrainingInterrupted: a signal stopped training (its checkpoint is written).
    """
    from glip.api import Predictor
    from glip.engine import TrainingInterrupted, train
    from glip.hub.loading import load_model

    out = Path(out_dir)
    if resume and (out / "metrics.json").is_file():
        logger.info("%s is already finished and tested (%s): nothing to do", out, out / "metrics.json")
        return load_json(out / "metrics.json")
    overrides = explicit_length(overrides)  # solver.max_iter=N wins over the official max_epoch
    out.mkdir(parents=True, exist_ok=True)
    train_json, subset = _write_train_subset(data, shots, seed, out)
    preset = transfer_overrides(mode, shots, solver=official_schedule)
    heads = resolve_tuning_mode(mode).heads  # type: ignore[union-attr]
    preset += [f"model.heads.{h}.enabled=true" for h in heads]  # a mode training a head adds it
    cfg = config_from_dict(config_to_dict(cfg), [*preset, *overrides])
    masks = "mask" in heads
    cfg.data.train_json, cfg.data.train_images = str(train_json), str(data.train_images)
    cfg.data.val_json = cfg.data.val_images = ""  # validation = the AP evaluator below
    if data.caption_prompt:
        cfg.data.caption_prompt = json.dumps([{"prefix": p, "name": n, "suffix": s} for p, n, s in data.caption_prompt])
    per_epoch = max(1, len(subset["images"]) * cfg.data.general_copy // cfg.solver.ims_per_batch)
    if cfg.train.eval_period <= 0:
        cfg.train.eval_period = per_epoch  # official CHECKPOINT_PER_EPOCH 1.0: evaluate every epoch
    cfg.solver.checkpoint_period = 0
    if official_schedule:
        logger.info(_official_schedule_line(cfg, mode, shots))
    result = train(
        cfg, out, weights=weights, evaluator=_ap_evaluator(data, eval_batch_size, masks), cpu=cpu,
        progress_bar=progress_bar, trust_pickle=trust_pickle, resume=resume,
    )  # fmt: skip
    if result.interrupted_by is not None:
        raise TrainingInterrupted(result)
    model = load_model(out / "model", trust_pickle=trust_pickle)
    test_json, test_images = data.test_files()
    metrics = evaluate_detection(
        Predictor(model, batch_size=eval_batch_size, masks=masks), test_json, test_images, override=data.categories,
        caption_prompt=data.caption_prompt, batch_size=eval_batch_size, progress=False,
        iou_types=("bbox", "segm") if masks else ("bbox",),
    ) or {}  # fmt: skip
    summary = {
        **metrics,
        "dataset": data.name,
        "mode": cfg.train.tuning,
        "shots": shots,
        "seed": seed,
        "train_images": len(subset["images"]),
        "min_instances_per_class": min(instances_per_category(subset).values(), default=0),
        "best_val_AP": result.best,
        "steps": result.progress.step,
        "early_stopped": result.early_stopped,
    }
    if not keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    write_json(out / "metrics.json", summary)
    return summary


def run_transfer_grid(
    cfg: GLIPConfig,
    datasets: Sequence[TransferData],
    out_dir: str | Path,
    *,
    weights: str | Path | None,
    mode: str = "prompt",
    shots: Sequence[int] = (1, 3, 5, 10),
    seeds: Sequence[int] = (3, 30, 300),
    overrides: Sequence[str] = (),
    **kwargs: Any,
) -> dict[str, dict[int, dict[str, float]]]:
    """Every dataset x shots x seeds cell (``OUT/<dataset>/<mode>/shot<k>_seed<s>/``);
    a cell whose ``metrics.json`` exists is read, not rerun. Prints and returns
    ``{dataset: {shots: {"mean", "std", "n", "APs"}}}`` (also ``OUT/summary.json``)."""
    out = Path(out_dir)
    results: dict[str, dict[int, list[float]]] = {}
    for data in datasets:
        for k in shots:
            for s in seeds:
                cell = out / data.name / str(resolve_tuning_mode(mode).name) / f"shot{k}_seed{s}"  # type: ignore[union-attr]
                done = cell / "metrics.json"
                if done.is_file():
                    ap = float(json.loads(done.read_text(encoding="utf-8"))["AP"])
                    print(f"{data.name} {shots_label(k)} seed {s}: done before, AP {100 * ap:.1f}")
                else:
                    metrics = finetune(
                        cfg, data, cell, weights=weights, mode=mode, shots=k, seed=s, overrides=overrides, **kwargs
                    )
                    ap = float(metrics["AP"])
                    print(f"{data.name} {shots_label(k)} seed {s}: AP {100 * ap:.1f} ({metrics['steps']} steps)")
                results.setdefault(data.name, {}).setdefault(k, []).append(ap)
    summary = summarize_grid(results)
    write_json(out / "summary.json", {name: {str(k): v for k, v in rows.items()} for name, rows in summary.items()})
    print(format_grid(summary))
    return summary


def shots_label(shots: int) -> str:
    """How a run's training set is named to users: ``"5-shot"``, or ``"all data"`` for 0 shots."""
    return f"{shots}-shot" if shots else "all data"


def summarize_grid(results: dict[str, dict[int, list[float]]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Mean and sample standard deviation (0 for one seed) of each dataset x shots cell."""
    return {
        name: {
            k: {
                "mean": statistics.fmean(aps),
                "std": statistics.stdev(aps) if len(aps) > 1 else 0.0,
                "n": len(aps),
                "APs": list(aps),
            }  # fmt: skip
            for k, aps in rows.items()
        }
        for name, rows in results.items()
    }


def format_grid(summary: dict[str, dict[int, dict[str, Any]]]) -> str:
    """A table: one row per dataset, one ``mean ± std`` AP column per shot count (x100)."""
    shots = sorted({k for rows in summary.values() for k in rows})
    header = f"{'dataset':<32}" + "".join(f"{shots_label(k):>16}" for k in shots)
    lines = [header, "-" * len(header)]
    for name, rows in summary.items():
        cells = []
        for k in shots:
            cell = rows.get(k)
            text = f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}" if cell else "-"
            cells.append(f"{text:>16}")
        lines.append(f"{name:<32}" + "".join(cells))
    return "\n".join(lines)
