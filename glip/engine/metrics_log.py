"""The training run's metric records: one json line per record in ``metrics.jsonl`` and,
when tensorboard is installed, the same scalars in TensorBoard; at the end of a run, the
curves as a picture (``curves.png``: losses, validation metrics, learning rate). On resume,
the records an interrupted run wrote after its last checkpoint are dropped (they are
written again)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "CURVES_NAME",
    "MetricsLog",
    "curve_panels",
    "format_metric",
    "is_ap",
    "read_records",
    "short_loss_name",
    "write_curves",
]

# The picture of the curves, beside metrics.jsonl and tensorboard/.
CURVES_NAME = "curves.png"


# Progress-bar names of the known loss terms; others lose their "loss_" prefix / "_loss" suffix.
_SHORT_NAMES = {
    "loss_reg": "reg",
    "loss_centerness": "ctr",
    "loss_dot_product_token": "tok",
    "loss_token": "mdetr_tok",
    "loss_contrastive_align": "align",
    "loss_inter": "inter",
    "loss_mlm": "mlm",
}


def short_loss_name(key: str) -> str:
    """The progress bar's short name of a loss term (``loss_inter`` -> ``inter``)."""
    if key in _SHORT_NAMES:
        return _SHORT_NAMES[key]
    return key.removeprefix("loss_").removesuffix("_loss") or key


class MetricsLog:
    """``output_dir/metrics.jsonl`` and ``output_dir/tensorboard`` (written by the main
    process only). A record is ``{"step": int, name: value, ...}``; a name without a ``/``
    goes to TensorBoard as ``train/<name>``."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self._writer: Any = None  # None: not opened yet; False: tensorboard is not installed
        self._purge_step: int | None = None  # set on resume (TensorBoard's purge_step)

    @property
    def path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    writer.add_scalar(k if "/" in k else f"train/{k}", v, record["step"])

    def truncate(self, step: int) -> None:
        """On resume from ``step``: drops the records of later steps and makes TensorBoard
        purge its events past ``step``."""
        self._purge_step = step + 1
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill -9
                continue
            if int(record.get("step", 0)) <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write_curves(self) -> Path | None:
        """Draws the records so far into ``output_dir/curves.png`` (see :func:`write_curves`)."""
        return write_curves(self.output_dir)

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None

    def _tensorboard(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._writer = False
                return None
            # purge_step: events at or after it, left by the interrupted run, are dropped.
            self._writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self._purge_step)
        return self._writer or None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a line cut by a kill is skipped); ``[]`` without the file."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def is_ap(key: str) -> bool:
    """Whether a metric name is an AP (``AP``, ``AP50``, ``segm_AP``...): stored in [0, 1],
    shown to users on the 0-100 scale."""
    return key.startswith("AP") or key.endswith("_AP")


def format_metric(key: str, value: float) -> str:
    """A metric as users read it: an AP on the 0-100 scale with one decimal (``44.1``, as
    ``glip evaluate`` prints it), any other value with 4 significant digits."""
    return f"{100 * value:.1f}" if is_ap(key) else f"{value:.4g}"


def curve_panels(records: list[dict[str, Any]]) -> list[Any]:
    """The charts of a run's records: training and validation loss against the step; the
    validation metrics (an evaluator's, AP on the 0-100 scale as the commands print it);
    the learning rate. A chart without values is left out."""
    from glip.utils.chart import Panel, Series

    def series(name: str, key: str, rows: list[dict[str, Any]], scale: float = 1.0, markers: bool = False) -> Series:
        rows = [r for r in rows if isinstance(r.get(key), (int, float))]
        return Series(name, [r["step"] for r in rows], [scale * r[key] for r in rows], markers)

    steps = (0.0, float(max((r["step"] for r in records), default=0)))
    train = [r for r in records if "lr" in r]
    val = [r for r in records if "lr" not in r]
    loss = Panel("loss", log_y=True)
    loss.series = [
        s for s in (series("train", "loss", train), series("validation", "val/loss", val, markers=True)) if s.xs
    ]
    metric_keys = list(
        dict.fromkeys(
            k for r in val for k, v in r.items() if "/" not in k and k != "step" and isinstance(v, (int, float))
        )
    )
    metrics = Panel("validation" + (" (AP on the 0-100 scale)" if any(map(is_ap, metric_keys)) else ""))
    metrics.series = [series(k, k, val, 100.0 if is_ap(k) else 1.0, markers=True) for k in metric_keys]
    lr = Panel("learning rate", [series("lr", "lr", train)], log_y=True)
    panels = [p for p in (loss, metrics, lr) if any(s.xs for s in p.series)]
    for p in panels:
        p.x_range = steps
    return panels


def write_curves(output_dir: str | Path) -> Path | None:
    """``output_dir/metrics.jsonl`` drawn into ``output_dir/curves.png`` (written atomically);
    returns its path, or None when there is no record."""
    from glip.utils.chart import draw_panels

    output_dir = Path(output_dir)
    panels = curve_panels(read_records(output_dir / "metrics.jsonl"))
    if not panels:
        return None
    path = output_dir / CURVES_NAME
    tmp = path.with_name(f".{CURVES_NAME}.tmp")
    draw_panels(panels).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
