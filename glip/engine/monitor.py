"""Evaluation-driven schedule state: the best value of one metric so far, early stopping
(official ``AUTO_TERMINATE_PATIENCE``), the learning-rate plateau test (official
``USE_AUTOSTEP``) and the best model's trainable weights (official ``model_best``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BestMonitor"]


class BestMonitor:
    """Best-so-far tracking of one metric: ``worse`` counts evaluations below the best (an
    equal value resets it, as the official ``eval_result < previous_best`` test); the
    trainable tensors of the best evaluation are kept on the CPU and restored at the end."""

    def __init__(self) -> None:
        self.best: float | None = None
        self.worse = 0
        self.stopped = False
        self.best_state: dict[str, Tensor] | None = None
        self._plateau_best: float | None = None
        self._bad = 0

    def update(self, value: float, model: nn.Module) -> None:
        if self.best is not None and value < self.best:
            self.worse += 1
            return
        self.best, self.worse = value, 0
        self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def plateau(self, value: float, patience: int) -> bool:
        """torch ``ReduceLROnPlateau`` (mode max, relative threshold 1e-4): True when the
        rate should drop now."""
        if self._plateau_best is None or value > self._plateau_best * (1 + 1e-4):
            self._plateau_best, self._bad = value, 0
            return False
        self._bad += 1
        if self._bad > patience:
            self._bad = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and plain values: ``weights_only`` loads it)."""
        return {"best": self.best, "worse": self.worse, "stopped": self.stopped, "best_state": self.best_state,
                "plateau_best": self._plateau_best, "bad": self._bad}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.worse, self.stopped = state["best"], int(state["worse"]), bool(state["stopped"])
        self.best_state, self._plateau_best, self._bad = state["best_state"], state["plateau_best"], int(state["bad"])

    def restore_best(self, model: nn.Module) -> None:
        if self.best_state is None:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in self.best_state.items():
                params[n].copy_(v)
