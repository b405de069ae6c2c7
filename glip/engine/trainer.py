"""The GLIP training loop (official ``do_train``, ``maskrcnn_benchmark/engine/trainer.py``),
on Hugging Face ``accelerate``: one process, several processes or machines, CPU (gloo)
or GPU, with mixed precision.

One step: skip the batch when too many of its images have no box (official
``MAX_NEG_PER_BATCH``, decided over all processes), forward under autocast, sum the named
losses, backward, full-model gradient clipping, optimiser step (skipped, with a warning,
when the gradient is not finite), schedule, EMA. Every ``log_period`` steps a line goes to
``metrics.jsonl`` (and TensorBoard); every ``checkpoint_period`` steps, at the end and on
SIGTERM/SIGINT a resumable checkpoint is written.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from glip.config import GLIPConfig
from glip.data import GroundingBatch
from glip.engine.checkpoint import (
    Progress,
    capture_rng_state,
    checkpoint_dir,
    load_rng_state,
    load_state,
    prune_checkpoints,
    restore_rng_state,
    write_checkpoint,
)
from glip.engine.data import ShardedBatchSampler, make_loader
from glip.engine.ema import ModelEMA
from glip.engine.head_needs import causal_head, is_empty_image
from glip.engine.loss_model import LossModel
from glip.engine.metrics_log import MetricsLog, format_metric, short_loss_name
from glip.engine.monitor import BestMonitor
from glip.engine.multitask import MultiSourceData, TrainingSource
from glip.engine.optim import build_optimizer, build_schedule, clip_grad_norm
from glip.engine.plan import StepClock, describe_plan
from glip.engine.shard_data import resume_stream, stream_state
from glip.engine.tuning import set_frozen_eval
from glip.modeling.criterion import Criterion
from glip.modeling.glip import GLIP
from glip.utils.distributed import all_gather_objects

__all__ = ["Evaluator", "LossModel", "TrainResult", "Trainer", "short_loss_name"]

logger = logging.getLogger(__name__)

# fn(model, step) -> {metric name: value}; called on every process with the model in eval mode.
Evaluator = Callable[[GLIP, int], Mapping[str, float]]


@dataclass
class TrainResult:
    """How :meth:`Trainer.fit` ended: ``progress`` at the end, the last checkpoint, and the
    signal that interrupted it (None when it ran to ``max_iter`` or ``max_steps``);
    ``early_stopped`` when ``solver.auto_terminate_patience`` ended it, ``best`` the best
    ``train.monitor`` value seen (the model then holds the weights of that evaluation);
    ``already_finished`` when a resumed run had nothing left to do."""

    progress: Progress
    checkpoint: Path | None
    interrupted_by: int | None = None
    metrics: dict[str, float] | None = None
    early_stopped: bool = False
    best: float | None = None
    already_finished: bool = False


class Trainer:
    """Trains ``model`` on ``train_set`` with the ``solver``/``train`` settings of ``cfg``.

    Args:
        cfg: the full configuration (saved with every checkpoint folder's run).
        model: a GLIP on the CPU, already frozen where it should be (see
            :func:`glip.train.prepare_for_training`).
        loss: the criterion (:func:`glip.modeling.build.build_loss`).
        train_set: a dataset of :class:`GroundingSample` with ``set_epoch``, or the sources
            of a multi-task run (:class:`glip.engine.multitask.MultiSourceData`).
        accelerator: an ``accelerate.Accelerator`` (decides processes, device, precision).
        output_dir: where checkpoints, ``metrics.jsonl`` and TensorBoard logs go.
        val_set: optional validation dataset: its mean losses are logged as ``val/<name>``.
        evaluator: optional ``fn(model, step) -> metrics`` run at each validation.
        pad_token_id: the tokenizer's padding id.
        progress_bar: show a tqdm bar on the main process.
    """

    def __init__(
        self,
        cfg: GLIPConfig,
        model: GLIP,
        loss: Criterion,
        train_set: Dataset | MultiSourceData,
        accelerator: Any,
        output_dir: str | Path,
        val_set: Dataset | None = None,
        evaluator: Evaluator | None = None,
        pad_token_id: int = 0,
        progress_bar: bool = True,
    ) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.train_set = train_set
        self.val_set = val_set
        self.evaluator = evaluator
        self.pad_token_id = pad_token_id
        self.progress_bar = progress_bar
        s = cfg.solver
        world = accelerator.num_processes
        if s.ims_per_batch % world:
            raise ValueError(f"solver.ims_per_batch {s.ims_per_batch} is not divisible by {world} processes")
        self.local_batch = s.ims_per_batch // world
        batches = len(train_set) // s.ims_per_batch
        if batches < 1:
            raise ValueError(f"{len(train_set)} training images are fewer than one batch of {s.ims_per_batch}")
        self.batches_per_epoch = batches
        self.max_iter = s.max_epoch * batches if s.max_epoch > 0 else s.max_iter
        self.ema = ModelEMA(model, s.model_ema) if s.model_ema > 0 else None
        optimizer = build_optimizer(model, s)
        self.schedule = build_schedule(optimizer, s, self.max_iter)
        ddp_model, self.optimizer = accelerator.prepare(LossModel(model, loss, s.seed), optimizer)
        self.loss_model = ddp_model
        self.model: GLIP = accelerator.unwrap_model(ddp_model).model
        self.progress = Progress()
        self._stop_signal: int | None = None
        self.log = MetricsLog(self.output_dir)
        self.monitor = BestMonitor()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        scaler = getattr(self.accelerator, "scaler", None)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "monitor": self.monitor.state_dict(),
            "progress": self.progress.to_dict(),
            "data": self._stream_state(),
        }

    def _stream_state(self) -> dict[str, Any] | None:
        acc = self.accelerator
        return stream_state(
            self.train_set, self.progress, self.local_batch, acc.num_processes, self.cfg.data.num_workers
        )

    def load_checkpoint(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Restores everything :meth:`save_checkpoint` wrote, this process's RNG included
        (``state``: its ``state.pt``, when already loaded)."""
        state = load_state(path) if state is None else state
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.schedule.apply(self.optimizer)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])
        self.progress = Progress(**state["progress"])
        if state.get("data") is not None:  # a shard stream's split and cursors
            acc = self.accelerator
            resume_stream(self.train_set, state["data"], self.progress, self.local_batch, acc.num_processes,
                          self.cfg.data.num_workers, path)  # fmt: skip
        if self.accelerator.is_main_process:
            self.log.truncate(self.progress.step)
        rng = load_rng_state(path, self.accelerator.process_index)
        if rng is not None:
            restore_rng_state(rng)
        logger.info("resumed from %s at step %d", path, self.progress.step)

    def save_checkpoint(self) -> Path:
        """A checkpoint of the current step (every process must call it)."""
        acc = self.accelerator
        rngs = all_gather_objects(capture_rng_state())
        path = None
        if acc.is_main_process:
            path = write_checkpoint(self.output_dir, self.progress.step, self.state_dict(), rngs, self.cfg)
            prune_checkpoints(self.output_dir, self.cfg.train.keep_checkpoints)
        acc.wait_for_everyone()
        return path or checkpoint_dir(self.output_dir, self.progress.step)

    # ------------------------------------------------------------------ loop
    def fit(self, max_steps: int | None = None) -> TrainResult:
        """Trains until ``max_iter`` (or ``max_steps``, for a partial run) and returns."""
        acc, s, t = self.accelerator, self.cfg.solver, self.cfg.train
        stop_at = self.max_iter if max_steps is None else min(max_steps, self.max_iter)
        clock = self._announce(stop_at)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        bar = self._progress_bar(stop_at)
        checkpoint: Path | None = None
        metrics: dict[str, float] = {}
        last_time, last_step = time.perf_counter(), self.progress.step
        try:
            self.loss_model.train()
            self._apply_freezing()
            if self.progress.step < stop_at and self._stop_signal is None:
                for source, batch in self._batches():
                    losses = self._step(batch.to(acc.device), source)
                    if losses is not None and (self.progress.step % t.log_period == 0 or self.progress.step == stop_at):
                        now = time.perf_counter()
                        speed = (self.progress.step - last_step) * s.ims_per_batch / max(now - last_time, 1e-9)
                        last_time, last_step = now, self.progress.step
                        self._log(losses, speed, bar)
                    if bar is not None:
                        bar.n = self.progress.step
                        bar.refresh()
                    if losses is not None and clock is not None and (line := clock.after_step(self.progress.step)):
                        logger.info(line)
                    done = self.progress.step >= stop_at
                    # Validation first: the checkpoint of the same step then holds its monitor state.
                    if (
                        losses is not None
                        and t.eval_period > 0
                        and self.progress.step % t.eval_period == 0
                        and not done
                    ):
                        metrics = self._timed_validate(clock)
                        if self._watch(metrics):
                            break
                    if losses is not None and not done and s.checkpoint_period > 0:
                        if self.progress.step % s.checkpoint_period == 0:
                            checkpoint = self.save_checkpoint()
                    if done or self._stop_requested():
                        break
            if self._stop_signal is None and self.progress.step >= self.max_iter and not self.monitor.stopped:
                metrics = self._timed_validate(clock)
                self._watch(metrics)
            checkpoint = self.save_checkpoint()
            self.monitor.restore_best(self.model)
            if acc.is_main_process:
                self._write_curves()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
            self.log.close()
        return TrainResult(
            self.progress, checkpoint, self._stop_signal, metrics, self.monitor.stopped, self.monitor.best
        )

    @property
    def finished(self) -> bool:
        """Whether the run is over: ``max_iter`` steps done, or stopped early."""
        return self.progress.step >= self.max_iter or self.monitor.stopped

    def _announce(self, stop_at: int) -> StepClock | None:
        """Logs the plan (main process) and returns the clock of the time estimate."""
        if not self.accelerator.is_main_process:
            return None
        images, start = len(self.train_set), self.progress.step
        logger.info(describe_plan(self.cfg, self.max_iter, self.batches_per_epoch, images, start, stop_at))
        s, t = self.cfg.solver, self.cfg.train
        validates = self.val_set is not None or self.evaluator is not None
        return StepClock(start, stop_at, t.eval_period, validates, self.max_iter, s.auto_terminate_patience >= 0)

    def _timed_validate(self, clock: StepClock | None) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.validate()
        if clock is not None:
            clock.validated(time.perf_counter() - start)
        return metrics

    def _batches(self) -> Iterator[tuple[TrainingSource | None, GroundingBatch]]:
        """``(source, batch)`` from where ``progress`` stands, advancing ``progress.batch`` (and
        ``epoch``) as each batch is read. One dataset: epoch after epoch of
        :class:`ShardedBatchSampler` batches (source None). Multi-task
        (:class:`MultiSourceData`): ``progress.batch`` counts the draws since the start and
        ``epoch`` is the draws over the batches of one epoch."""
        acc, s = self.accelerator, self.cfg.solver
        if isinstance(self.train_set, MultiSourceData):
            loader = functools.partial(make_loader, cfg=self.cfg, pad_token_id=self.pad_token_id)
            batches = self.train_set.batches(
                self.progress.batch, self.local_batch, acc.process_index, acc.num_processes, loader
            )
            for source, batch in batches:
                self.progress.batch += 1
                self.progress.epoch = self.progress.batch // self.batches_per_epoch
                yield source, batch
            return
        while True:
            sampler = ShardedBatchSampler(
                len(self.train_set), self.local_batch, acc.process_index, acc.num_processes,
                s.seed, self.progress.epoch, self.progress.batch,
            )  # fmt: skip
            for batch in make_loader(self.train_set, sampler, self.cfg, self.pad_token_id):
                self.progress.batch += 1
                yield None, batch
            self.progress.epoch += 1
            self.progress.batch = 0

    def _step(self, batch: GroundingBatch, source: TrainingSource | None = None) -> dict[str, float] | None:
        """One optimiser step; None when the batch was skipped. A multi-task ``source``
        scales the batch's losses by its ``loss_weight`` and adds ``loss/<source name>``."""
        acc, s = self.accelerator, self.cfg.solver
        # An image is empty when no head learns from it (its boxes, or a head's extra inputs
        # such as a VQA answer); a causal head's own batch (captions) has no boxes by design.
        heads = self.model.heads
        empty = sum(int(is_empty_image(t, heads)) for t in batch.targets)
        skip_here = empty == len(batch) or empty > len(batch) * s.max_neg_per_batch
        if causal_head(heads, batch.kinds) is not None:
            skip_here = False
        if _any_process(skip_here, acc):
            logger.warning("skipping a batch: %d of %d images without boxes on this process", empty, len(batch))
            self.progress.skipped += 1
            return None
        with acc.autocast():
            loss_dict = self.loss_model(batch, self.progress.step)
        if source is not None and source.loss_weight != 1.0:
            loss_dict = {k: v * source.loss_weight for k, v in loss_dict.items()}
        total = sum(loss_dict.values())
        acc.backward(total)
        if getattr(acc, "scaler", None) is not None:
            acc.unscale_gradients()
        grad_norm = clip_grad_norm(self.model.parameters(), s)
        finite = bool(torch.isfinite(grad_norm))
        if finite or getattr(acc, "scaler", None) is not None:
            # With a grad scaler, its step skips non-finite gradients and lowers the scale.
            self.optimizer.step()
        else:
            # Official: the NaN loss is zeroed and the step taken; we leave the weights alone.
            logger.warning(
                "non-finite gradient (norm %s) at step %d: update skipped", grad_norm, self.progress.step + 1
            )
            self.progress.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step(self.optimizer)
        if self.ema is not None:
            self.ema.update(self.model)
        self.progress.step += 1
        reduced = {k: acc.reduce(v.detach().float(), reduction="mean") for k, v in loss_dict.items()}
        out = {k: float(v) for k, v in reduced.items()}
        out["loss"] = sum(out.values())
        if source is not None:
            out[f"loss/{source.name}"] = out["loss"]
        out["grad_norm"] = float(grad_norm)
        return out

    def _apply_freezing(self) -> None:
        """Official: frozen parts (language backbone, and the backbone / head of a transfer
        mode) are put back in eval mode (no dropout) whenever the model is set to train."""
        b = self.cfg.model.backbone
        set_frozen_eval(self.model, self.cfg.train.tuning, self.cfg.model.text.freeze, b.freeze, b.freeze_fpn)

    def _watch(self, metrics: Mapping[str, float]) -> bool:
        """Official early stopping and ``USE_AUTOSTEP`` on ``train.monitor``; True to stop."""
        s = self.cfg.solver
        key = self.cfg.train.monitor
        if key not in metrics or (s.auto_terminate_patience < 0 and not s.use_autostep):
            return False
        value = float(metrics[key])
        self.monitor.update(value, self.model)
        if s.use_autostep and self.monitor.plateau(value, s.step_patience):
            # torch ReduceLROnPlateau (mode "max"), as the official WarmupReduceLROnPlateau.
            self.schedule.base_lrs = [max(lr * s.gamma, s.min_lr) for lr in self.schedule.base_lrs]
            self.schedule.apply(self.optimizer)
            logger.info("no %s gain for %d evaluations: learning rates x %g", key, s.step_patience + 1, s.gamma)
        if 0 <= s.auto_terminate_patience <= self.monitor.worse:
            best = format_metric(key, self.monitor.best)
            logger.info("early stop at step %d: best %s %s", self.progress.step, key, best)
            self.monitor.stopped = True
        return self.monitor.stopped

    # ------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation losses (``val/<name>``) and the evaluator's metrics; logged."""
        acc = self.accelerator
        metrics: dict[str, float] = {}
        self.loss_model.eval()
        try:
            if self.val_set is not None and len(self.val_set) >= acc.num_processes:
                local = max(1, min(self.local_batch, len(self.val_set) // acc.num_processes))
                sampler = ShardedBatchSampler(
                    len(self.val_set), local, acc.process_index, acc.num_processes, shuffle=False
                )
                sums: dict[str, float] = {}
                count = 0
                for batch in make_loader(self.val_set, sampler, self.cfg, self.pad_token_id):
                    with acc.autocast():
                        losses = self.loss_model(batch.to(acc.device))
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(acc.reduce(v.detach().float(), reduction="mean"))
                    count += 1
                metrics = {f"val/{k}": v / max(count, 1) for k, v in sums.items()}
                if metrics:
                    metrics["val/loss"] = sum(metrics.values())
            if self.evaluator is not None:
                metrics.update({str(k): float(v) for k, v in self.evaluator(self.model, self.progress.step).items()})
        finally:
            self.loss_model.train()
            self._apply_freezing()
        if metrics and acc.is_main_process:
            self.log.write({"step": self.progress.step, **metrics})
        return metrics

    # --------------------------------------------------------------- logging
    def _progress_bar(self, total: int) -> Any:
        if not (self.progress_bar and self.accelerator.is_main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.progress.step, desc="train", unit="step", dynamic_ncols=True)

    def _log(self, losses: dict[str, float], speed: float, bar: Any) -> None:
        if not self.accelerator.is_main_process:
            return
        lr = float(self.optimizer.param_groups[0]["lr"])
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        record = {"step": self.progress.step, "epoch": self.progress.epoch, **losses, "lr": lr,
                  "lr_min": min(lrs), "lr_max": max(lrs), "images_per_s": speed}  # fmt: skip
        self.log.write(record)
        if bar is not None:
            shown = {"loss": f"{losses['loss']:.4f}"}  # then each term, in the criterion's order
            terms = {k: v for k, v in losses.items() if k not in ("loss", "grad_norm") and "/" not in k}
            shown.update({short_loss_name(k): f"{v:.3f}" for k, v in terms.items()})
            # the largest group's lr: the first group may be frozen at 0
            shown.update(lr=f"{max(lrs):.2e}", img_s=f"{speed:.1f}")
            bar.set_postfix(ordered_dict=shown, refresh=False)

    def _write_curves(self) -> None:
        """``curves.png`` beside ``metrics.jsonl``; a failure to draw is a warning, not a failed run."""
        try:
            path = self.log.write_curves()
        except Exception as e:  # noqa: BLE001 - the trained model matters more than its picture
            logger.warning("could not draw the training curves: %s: %s", type(e).__name__, e)
            return
        if path is not None:
            logger.info("training curves: %s", path)

    # --------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        logger.warning("received signal %d: saving a checkpoint after this step", signum)
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        """Whether any process got a signal (all stop at the same step)."""
        stop = _any_process(self._stop_signal is not None, self.accelerator)
        if stop and self._stop_signal is None:
            self._stop_signal = int(signal.SIGTERM)
        return stop


def _any_process(flag: bool, accelerator: Any) -> bool:
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)
