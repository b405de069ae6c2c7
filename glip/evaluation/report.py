"""Metric tables and JSON files shared by the evaluations."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glip.utils.fs import atomic_write_text

__all__ = ["format_metrics", "format_suite", "suite_summary", "write_json"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value < 0 else f"{100 * value:.1f}"
    return str(value)


def format_metrics(metrics: Mapping[str, float], title: str = "") -> str:
    """One row of metrics in percent (``-``: no ground truth), under a header row."""
    names = list(metrics)
    cells = [_cell(metrics[n]) for n in names]
    widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
    lines = [title] if title else []
    lines.append("  ".join(n.rjust(w) for n, w in zip(names, widths)))
    lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def suite_summary(values: Mapping[str, float]) -> dict[str, float]:
    """Average (and median) of one metric over a suite's datasets, as ODinW is reported.

    Reference: the official GLIP repository has no averaging script; its README (model-zoo
    note [4], "zero-shot performance on the 13 ODinW datasets") and the GLIP paper report
    the arithmetic mean over the datasets of each dataset's COCO AP (pycocotools
    ``stats[0]``, AP@[.5:.95], from ``tools/test_grounding_net.py``), every dataset
    weighing the same whatever its size; ELEVATER's ODinW-35 adds the median. A dataset's
    AP of 0 counts; a negative value (pycocotools' -1: no ground truth) or ``None`` (not
    run) is left out. Values are AP in [0, 1]."""
    finite = [v for v in values.values() if v is not None and v >= 0]
    if not finite:
        return {"average": -1.0, "median": -1.0}
    return {"average": sum(finite) / len(finite), "median": float(statistics.median(finite))}


def format_suite(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], median: bool = False) -> str:
    """One line per dataset (metrics in percent) and an Average (and Median) line of the
    first column."""
    names = list(rows)
    width = max([len(n) for n in names] + [len("dataset"), len("Median")])
    header = "dataset".ljust(width) + "".join(c.rjust(8) for c in columns)
    lines = [header, "-" * len(header)]
    for name in names:
        lines.append(name.ljust(width) + "".join(_cell(rows[name].get(c, -1.0)).rjust(8) for c in columns))
    lines.append("-" * len(header))
    summary = suite_summary({n: rows[n].get(columns[0], -1.0) for n in names})
    lines.append("Average".ljust(width) + _cell(summary["average"]).rjust(8))
    if median:
        lines.append("Median".ljust(width) + _cell(summary["median"]).rjust(8))
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> Path:
    """Writes ``data`` as indented JSON atomically (a temporary file renamed into place),
    so an interrupted run never leaves a half-written file."""
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n")
