"""Resumable training checkpoints, written atomically.

A checkpoint is a folder ``OUTPUT/checkpoints/step_<NNNNNNN>/`` holding

- ``state.pt``: model, optimiser, schedule, EMA and grad-scaler state, the best-metric
  monitor (best value, patience counters, best weights) and the :class:`Progress` (step,
  epoch, batch index within the epoch);
- ``rng_<rank>.pt``: each process's Python, numpy and torch generator states;
- ``config.yaml``: the run's settings (:mod:`glip.engine.resume` compares them on resume).

It is assembled in a hidden temporary folder and renamed into place (``os.replace``),
then ``checkpoints/last`` (written the same way) names it: a crash at any moment leaves
the previous checkpoint intact. Everything is saved as tensors and plain Python values,
so files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glip.config import GLIPConfig, save_config
from glip.utils.fs import atomic_directory, atomic_write_text

__all__ = [
    "CheckpointReadError",
    "Progress",
    "capture_rng_state",
    "checkpoint_dir",
    "latest_checkpoint",
    "load_rng_state",
    "load_state",
    "prune_checkpoints",
    "restore_rng_state",
    "write_checkpoint",
]

STATE_NAME = "state.pt"
CONFIG_NAME = "config.yaml"
LAST_NAME = "last"


@dataclass
class Progress:
    """Where training stands.

    Attributes:
        step: optimiser steps done (skipped batches do not count).
        epoch: the epoch being read.
        batch: global batches of ``epoch`` already consumed (the next one to read); in a
            multi-task run (``data.sources``), the batches drawn since the start.
        skipped: batches skipped so far (too many images without boxes, non-finite loss).
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (legacy global) and torch CPU (and CUDA, when used) generator states."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:07d}"


def write_checkpoint(
    output_dir: str | Path,
    step: int,
    state: dict[str, Any] | None,
    rng_states: list[dict[str, Any]],
    config: GLIPConfig | None = None,
) -> Path:
    """Writes ``state``, every rank's RNG state and the run's ``config`` (``config.yaml``,
    what a resumed run compares its settings with) as checkpoint ``step`` and points
    ``checkpoints/last`` at it. Called by the main process only, with all ranks' RNG
    states gathered."""
    final = checkpoint_dir(output_dir, step)
    with atomic_directory(final) as tmp:
        torch.save(state, tmp / STATE_NAME)
        for rank, rng in enumerate(rng_states):
            torch.save(rng, tmp / f"rng_{rank}.pt")
        if config is not None:
            save_config(config, tmp / CONFIG_NAME)
    atomic_write_text(final.parent / LAST_NAME, final.name + "\n")
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/last`` names, or None."""
    root = Path(output_dir) / "checkpoints"
    last = root / LAST_NAME
    if not last.is_file():
        return None
    path = root / last.read_text(encoding="utf-8").strip()
    return path if (path / STATE_NAME).is_file() else None


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


def _load(file: Path) -> Any:
    """``torch.load`` of a checkpoint file; any failure is one :class:`CheckpointReadError`
    line naming the file and, when there is one, an older checkpoint to resume from."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for a bad file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        folder = file.parent
        older = sorted(p for p in folder.parent.glob("step_*") if p.is_dir() and p.name < folder.name)
        hint = f"; resume from an older one with --resume-from {older[-1]}" if older else ""
        raise CheckpointReadError(f"{file} is corrupt or not a checkpoint ({reason}){hint}") from None


def load_state(path: str | Path) -> dict[str, Any]:
    """``state.pt`` of a checkpoint folder (or the file itself), on the CPU."""
    path = Path(path)
    file = path / STATE_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    state = _load(file)
    if not isinstance(state, dict) or "progress" not in state:
        raise CheckpointReadError(f"{file} is not a training checkpoint (no progress record)")
    return state


def load_rng_state(path: str | Path, rank: int) -> dict[str, Any] | None:
    file = Path(path) / f"rng_{rank}.pt"
    return _load(file) if file.is_file() else None


def prune_checkpoints(output_dir: str | Path, keep: int, protect: Callable[[Path], bool] = lambda p: False) -> None:
    """Deletes all but the ``keep`` newest step checkpoints (the one ``last`` names stays)."""
    root = Path(output_dir) / "checkpoints"
    current = latest_checkpoint(output_dir)
    found = sorted(p for p in root.glob("step_*") if p.is_dir())
    for path in found[: max(len(found) - keep, 0)]:
        if path != current and not protect(path):
            shutil.rmtree(path, ignore_errors=True)
