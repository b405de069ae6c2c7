"""What a training run will do, said before it starts: the planned steps and where that
number comes from (``solver.max_epoch`` or ``solver.max_iter``), then, once a few steps
have been timed, an estimate of the time left."""

from __future__ import annotations

import time

from glip.config import GLIPConfig

__all__ = ["ESTIMATE_AFTER", "StepClock", "describe_plan", "format_duration"]

# Steps timed before the estimate, after the first one (which pays for warm-up: allocator,
# lazy imports, first data loading).
ESTIMATE_AFTER = 5


def format_duration(seconds: float) -> str:
    """``42 s``, ``5 min 12 s``, ``16 h 05 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def describe_plan(
    cfg: GLIPConfig, max_iter: int, batches_per_epoch: int, train_images: int, start: int, stop_at: int
) -> str:
    """One line: ``plan: N steps (how N is made)``, then the resume point, a ``--max-steps``
    stop, the validation period, early stopping and when the time will be estimated.

    Args:
        max_iter: the schedule's length in steps.
        batches_per_epoch: optimiser steps per pass over the training set.
        train_images: images per epoch (dataset copies included).
        start: the step training starts from (a resumed run's checkpoint step).
        stop_at: the step this call stops at (``max_iter``, or ``--max-steps``).
    """
    s, t = cfg.solver, cfg.train
    copies = cfg.data.general_copy
    images = f"{train_images // copies} images x {copies} copies" if copies > 1 else f"{train_images} images"
    epoch = f"{_count(batches_per_epoch, 'step')} ({images}, batch {s.ims_per_batch})"
    how = (
        f"solver.max_epoch={s.max_epoch} x {epoch}"
        if s.max_epoch > 0
        else f"solver.max_iter={s.max_iter}; an epoch is {epoch}"
    )
    parts = [f"plan: {_count(max_iter, 'step')} ({how})"]
    if start:
        parts.append(f"resuming at step {start:,}")
    if stop_at < max_iter:
        parts.append(f"stopping at step {stop_at:,} (--max-steps)")
    if t.eval_period > 0:
        parts.append(f"validation every {t.eval_period:,} steps")
    if s.auto_terminate_patience >= 0:
        parts.append(f"early stop after {s.auto_terminate_patience} validations below the best {t.monitor}")
    if stop_at - start > ESTIMATE_AFTER + 1:
        parts.append(f"time estimated after {ESTIMATE_AFTER + 1} steps")
    return "; ".join(parts)


class StepClock:
    """Times the steps after the first and, :data:`ESTIMATE_AFTER` steps later, gives one
    line estimating the time left: the remaining steps at the measured rate plus the
    validations still due at the measured validation time (or a note that none was timed).

    Args:
        start: the step training starts from.
        stop_at: the step the run stops at.
        eval_period: validation period in steps (0: none).
        validates: whether a validation does anything (a validation set or an evaluator);
            without, ``eval_period`` is ignored. A run that reaches ``max_iter`` also
            validates at its end.
        max_iter: the schedule's length.
        early_stop: whether early stopping may end the run sooner (said in the line).
    """

    def __init__(
        self, start: int, stop_at: int, eval_period: int, validates: bool, max_iter: int, early_stop: bool
    ) -> None:
        self.start, self.stop_at = start, stop_at
        self.eval_period, self.validates = (eval_period if validates else 0), validates
        self.max_iter, self.early_stop = max_iter, early_stop
        self._t0: float | None = None
        self._validation = 0.0  # seconds spent validating inside the timed window
        self._validations: list[float] = []
        self._first = start
        self._done = False

    def validated(self, seconds: float) -> None:
        """Records one validation's duration."""
        self._validations.append(seconds)
        if self._t0 is not None:
            self._validation += seconds

    def after_step(self, step: int) -> str | None:
        """Called after each optimiser step; returns the estimate line once, else None."""
        if self._done:
            return None
        if self._t0 is None:
            self._t0 = time.perf_counter()  # after the first step
            self._first = step
            return None
        timed = step - self._first
        if timed < ESTIMATE_AFTER:
            return None
        self._done = True
        per_step = max(time.perf_counter() - self._t0 - self._validation, 0.0) / timed
        left = self.stop_at - step
        e = self.eval_period
        due = (self.stop_at - 1) // e - step // e if e > 0 else 0  # in the loop, before stop_at
        due += int(self.validates and self.stop_at >= self.max_iter)  # the final one
        total = left * per_step
        detail = f"{_count(left, 'step')} x {per_step:.2f} s"
        if due and self._validations:
            per_val = sum(self._validations) / len(self._validations)
            total += due * per_val
            detail += f" + {_count(due, 'validation')} x {per_val:.1f} s"
        elif due:
            detail += f"; {_count(due, 'validation')} not timed yet, not included"
        line = f"estimated time left: {format_duration(total)} ({detail})"
        return line + ("; early stopping may end it sooner" if self.early_stop else "")
