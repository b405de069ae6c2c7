"""The training run's metric records: one json line per record in ``metrics.jsonl`` and,
when tensorboard is installed, the same scalars in TensorBoard. On resume, the records an
interrupted run wrote after its last checkpoint are dropped (they are written again)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "short_loss_name"]

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
