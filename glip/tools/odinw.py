"""The ODinW suite runner: every dataset's COCO AP, one table, average (and median).

Results are stored per dataset (``OUT/<dataset>/metrics.json`` and ``results.json``); a
run finds the datasets already finished there and skips them, so an interrupted suite
resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from glip.evaluation import OdinwDataset, format_suite, odinw_suite, suite_summary, write_json
from glip.tools.evaluate import PredictorLike, evaluate_detection
from glip.utils.distributed import barrier, is_main_process

__all__ = ["SUITE_COLUMNS", "check_odinw_data", "run_odinw"]

SUITE_COLUMNS = ("AP", "AP50", "AP75")


def check_odinw_data(datasets: Sequence[OdinwDataset], root: str | Path, split: str | None = None) -> None:
    """Raises ``FileNotFoundError`` naming every dataset folder or annotation file missing
    under ``root``."""
    missing = []
    for ds in datasets:
        ann, images = ds.files(root, split)
        if not images.is_dir():
            missing.append(f"{ds.name}: folder {images}")
        elif not ann.is_file():
            missing.append(f"{ds.name}: annotation file {ann}")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} ODinW dataset(s) missing under {root} (download them with the official "
            "odinw/download_datasets.py, into a folder holding odinw/):\n  " + "\n  ".join(missing)
        )


def run_odinw(
    predictor: PredictorLike,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    suite: str = "odinw13",
    datasets: Sequence[OdinwDataset] | None = None,
    split: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, object] | None:
    """Evaluates the suite's datasets (or ``datasets``) zero-shot with their official
    class names and prompts; prints and returns the summary on the main process.

    Returns:
        ``{"AP": average AP, "AP_median": median AP, "datasets": {name: metrics}}``,
        also written to ``OUT/metrics.json``; ``None`` on the other processes.
    """
    datasets = list(odinw_suite(suite) if datasets is None else datasets)
    check_odinw_data(datasets, data_root, split)
    out = Path(out_dir)
    per_dataset: dict[str, dict[str, float]] = {}
    for i, ds in enumerate(datasets):
        done = out / ds.name / "metrics.json"
        if done.is_file():
            per_dataset[ds.name] = json.loads(done.read_text(encoding="utf-8"))
            if is_main_process():
                print(f"[{i + 1}/{len(datasets)}] {ds.name}: done before, AP {100 * per_dataset[ds.name]['AP']:.1f}")
            continue
        ann, images = ds.files(data_root, split)
        metrics = evaluate_detection(
            predictor,
            ann,
            images,
            task="coco",
            out_dir=out / ds.name,
            batch_size=batch_size,
            override=ds.categories,
            caption_prompt=ds.caption_prompt,
            progress=progress,
            title=f"[{i + 1}/{len(datasets)}] {ds.name}",
        )
        barrier()  # the main process has written metrics.json before anyone moves on
        if metrics is not None:
            per_dataset[ds.name] = metrics
            print(f"[{i + 1}/{len(datasets)}] {ds.name}: AP {100 * metrics['AP']:.1f}")
    if not is_main_process():
        return None
    summary = suite_summary({name: m["AP"] for name, m in per_dataset.items()})
    result: dict[str, object] = {"AP": summary["average"], "AP_median": summary["median"], "datasets": per_dataset}
    write_json(out / "metrics.json", result)
    print(format_suite(per_dataset, SUITE_COLUMNS, median=len(datasets) > 13))
    return result
