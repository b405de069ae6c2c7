"""Setting up a training run from a config: model, data, accelerator, resume."""

from __future__ import annotations

import importlib
import logging
import random
import signal
from pathlib import Path

import numpy as np
import torch

from glip.config import GLIPConfig, save_config
from glip.engine.checkpoint import STATE_NAME, latest_checkpoint, load_state
from glip.engine.data import build_dataset
from glip.engine.multitask import build_training_data
from glip.engine.resume import resumed_config
from glip.engine.trainer import Evaluator, Trainer, TrainResult
from glip.engine.tuning import apply_tuning, record_tuned_prompt, resolve_tuning_mode, set_frozen_eval
from glip.engine.vqa import with_answer_vocabulary
from glip.modeling.build import build_loss, build_model
from glip.modeling.glip import GLIP
from glip.modeling.language.text_encoder import load_text_config
from glip.text import load_tokenizer, resolve_text_encoder

__all__ = [
    "TrainingInterrupted",
    "build_training_model",
    "load_evaluator",
    "prepare_for_training",
    "resolve_precision",
    "train",
]

logger = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Raised by the commands that go on after training (``glip finetune``) when a signal
    stopped it: the checkpoint is written, the final model is not. ``result`` is the
    :class:`TrainResult`; ``train(..., resume=True)`` continues the run."""

    def __init__(self, result: TrainResult) -> None:
        self.result = result
        name = signal.Signals(result.interrupted_by).name if result.interrupted_by is not None else "a signal"
        super().__init__(f"interrupted by {name} at step {result.progress.step} (checkpoint {result.checkpoint})")


def build_training_model(cfg: GLIPConfig, weights: str | Path | None = None, trust_pickle: bool = False) -> GLIP:
    """A GLIP to train: from ``weights`` (a zoo name, official ``.pth`` or our folder, loaded
    with the architecture of ``cfg``; the heads the transfer mode trains whole may be
    absent from them), else freshly initialised with the text encoder's
    pretrained weights when ``cfg.model.text.pretrained`` (offline: a local folder, a
    packaged name such as ``all-MiniLM-L6-v2``, or the Hugging Face cache)."""
    text_dir = resolve_text_encoder(cfg.model.text.encoder)
    if weights is not None:
        from glip.hub.loading import load_model

        # The heads a transfer mode trains whole (the mask head) may start fresh.
        mode = resolve_tuning_mode(cfg.train.tuning)
        fresh = mode.heads if mode is not None else ()
        return load_model(weights, cfg, text_encoder=text_dir, trust_pickle=trust_pickle, fresh_heads=fresh)
    model = build_model(
        cfg,
        load_text_config(cfg.model.text.type, text_dir),
        load_tokenizer(text_dir),
        pretrained_text=text_dir if cfg.model.text.pretrained else None,
        pretrained_backbone=True,  # a timm body's weights, when model.backbone.timm.pretrained
    )
    return model


def prepare_for_training(model: GLIP, cfg: GLIPConfig) -> GLIP:
    """Freezes what the official training freezes and puts the model in train mode.

    - the parameters the heads declare ``untrained`` (the official ``cls_logits``, a
      leftover no released loss uses): frozen so that no process waits for their gradient.
    - the text encoder when ``model.text.freeze`` (official ``LANGUAGE_BACKBONE.FREEZE``).
    - backbone stages up to ``model.backbone.freeze_at``: done by the builder; the whole
      visual body when ``model.backbone.freeze`` and the FPN when ``freeze_fpn`` (official
      ``BACKBONE.FREEZE`` / ``FPN.FREEZE``), kept in eval mode.
    - the transfer mode ``train.tuning`` (:mod:`glip.engine.tuning`): full, linear probing,
      prompt tuning...; frozen parts are kept in eval mode.
    """
    model.freeze_untrained()
    if cfg.model.text.freeze:
        model.text_encoder.requires_grad_(False)
    apply_tuning(model, cfg.train.tuning)
    b = cfg.model.backbone
    for module, frozen in ((model.backbone.body, b.freeze), (model.backbone.fpn, b.freeze_fpn)):
        if frozen:
            module.requires_grad_(False)
    model.train()
    set_frozen_eval(model, cfg.train.tuning, cfg.model.text.freeze, b.freeze, b.freeze_fpn)
    return model


def resolve_precision(cfg: GLIPConfig, cpu: bool) -> str:
    """accelerate's ``mixed_precision`` for ``train.precision``: ``auto`` gives bf16 (or
    fp16 with a grad scaler, as the official ``USE_AMP``) on GPUs when
    ``solver.use_amp``, and fp32 on the CPU."""
    p = cfg.train.precision
    if p not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"train.precision must be auto, no, bf16 or fp16, got {p!r}")
    if p != "auto":
        return p
    if cpu or not cfg.solver.use_amp or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def load_evaluator(spec: str, cfg: GLIPConfig) -> Evaluator | None:
    """``"package.module:function"`` -> ``lambda model, step: function(model, cfg, step)``;
    None (with a warning) when it cannot be imported."""
    if not spec:
        return None
    module_name, _, func_name = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name or "evaluate")
    except (ImportError, AttributeError) as e:
        logger.warning("train.evaluator %r is not importable (%s): only validation losses are computed", spec, e)
        return None
    return lambda model, step: func(model, cfg, step)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    cfg: GLIPConfig,
    output_dir: str | Path,
    *,
    weights: str | Path | None = None,
    resume: str | Path | bool | None = None,
    max_steps: int | None = None,
    evaluator: Evaluator | None = None,
    cpu: bool | None = None,
    progress_bar: bool = True,
    trust_pickle: bool = False,
) -> TrainResult:
    """Trains a GLIP as ``cfg`` says, writing into ``output_dir``.

    Run it under ``accelerate launch`` / ``torchrun`` for several processes; every
    process calls it.

    Args:
        weights: initial weights (official ``.pth`` or a folder of ours); ignored on resume.
        resume: True (or ``"auto"``): continue from ``output_dir``'s last checkpoint if
            there is one; a path: from that checkpoint folder (refused unless it is one).
            ``metrics.jsonl`` and TensorBoard drop what was logged after the checkpoint's
            step, so that each step is logged once. The optimiser settings stay the
            checkpoint's (:func:`glip.engine.resume.resumed_config`: a warning names the
            ignored ones, ``config.yaml`` records them); a finished run (``max_iter`` reached
            or stopped early) trains and validates nothing more (``already_finished``).
        max_steps: stop (with a checkpoint) after this many steps in all, without
            changing the schedule, which still spans ``max_iter``.
        evaluator: ``fn(model, step) -> metrics`` at each validation; default the
            importable ``train.evaluator`` of the config, if any.
        cpu: force the CPU (default: the GPU when there is one).
        trust_pickle: allow an official ``.pth`` that needs unsafe unpickling.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    output_dir = Path(output_dir)
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    # Multi-task: each step trains some heads only, the others get no gradient.
    unused = cfg.train.find_unused_parameters or bool(cfg.data.sources)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=resolve_precision(cfg, cpu),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
    )
    # The same initial weights on every process (DDP also broadcasts rank 0's).
    _seed_everything(cfg.solver.seed)
    checkpoint, state = None, None
    if resume:
        checkpoint = latest_checkpoint(output_dir) if resume is True or resume == "auto" else Path(resume)
        if checkpoint is None:
            logger.info("no checkpoint in %s: starting from scratch", output_dir)
        elif not (checkpoint / STATE_NAME).is_file():
            raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (a folder holding {STATE_NAME})")
        else:
            state = load_state(checkpoint)  # a corrupt file fails here, before anything is built
            cfg = resumed_config(cfg, checkpoint)  # the optimiser settings stay the checkpoint's
    cfg = with_answer_vocabulary(cfg)  # VQA: the answers of data.train_json, saved with the model
    model = build_training_model(cfg, None if checkpoint is not None else weights, trust_pickle=trust_pickle)
    prepare_for_training(model, cfg)
    tokenizer = model.tokenizer
    train_set = build_training_data(cfg, tokenizer)  # one dataset, or the sources of a multi-task run
    val_set = build_dataset(cfg, tokenizer, train=False) if cfg.data.val_json else None
    if cfg.train.tuning:
        record_tuned_prompt(model, train_set, cfg.model.text.max_query_len)
    if evaluator is None:
        evaluator = load_evaluator(cfg.train.evaluator, cfg)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.yaml")
    # Training randomness (dropout, drop-path, DropBlock) differs between processes.
    _seed_everything(cfg.solver.seed + 1000 * accelerator.process_index + 1)
    trainer = Trainer(
        cfg,
        model,
        build_loss(cfg),
        train_set,
        accelerator,
        output_dir,
        val_set=val_set,
        evaluator=evaluator,
        pad_token_id=int(tokenizer.pad_token_id or 0),
        progress_bar=progress_bar,
    )
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint, state)
        del state
    if checkpoint is not None and trainer.finished:
        # Nothing to train or validate again; the final model is written if it is missing.
        logger.info("the run in %s is already finished (step %d): nothing to do", output_dir, trainer.progress.step)
        trainer.monitor.restore_best(trainer.model)
        result = TrainResult(trainer.progress, checkpoint, None, {}, trainer.monitor.stopped, trainer.monitor.best,
                             already_finished=True)  # fmt: skip
        save = not (output_dir / "model").is_dir()
    else:
        result = trainer.fit(max_steps=max_steps)
        save = result.interrupted_by is None and trainer.finished
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and save:
        _save_final(trainer, output_dir, weights)
    accelerator.end_training()
    return result


def _save_final(trainer: Trainer, output_dir: Path, weights: str | Path | None = None) -> None:
    """``output_dir/model`` (and ``model_ema``): model-zoo folders for :func:`glip.load_model`.
    A frozen pretrained text encoder is referenced by name, not copied. A run of a partial
    transfer mode (linear, prompt...) from ``weights`` stores only the tensors it trained,
    over a reference to ``weights`` (:func:`glip.hub.tuned.save_tuned`); the ``mask`` mode
    saves the whole model (its base may lack the head it trains). Either records the
    classes of a transfer run (``model.tuned_prompt``)."""
    from glip.hub.checkpoint import save_model
    from glip.hub.sources import resolve_model_source
    from glip.hub.tuned import save_tuned

    mode = resolve_tuning_mode(trainer.cfg.train.tuning)
    if weights is not None and mode is not None and mode.saves_delta:
        # A bare .pth base carries no config: the delta records the run's (same architecture).
        carried = resolve_model_source(weights).config is not None
        base_config = None if carried else output_dir / "config.yaml"
        save_tuned(trainer.model, output_dir / "model", base=weights, mode=mode.name, base_config=base_config)
        return
    text = trainer.cfg.model.text
    include_text = not (text.freeze and text.pretrained)
    save_model(trainer.model, output_dir / "model", include_text_encoder=include_text)
    if trainer.ema is not None:
        ema = trainer.ema.module
        ema.config, ema.tokenizer = trainer.model.config, trainer.model.tokenizer
        ema.tuned_prompt = trainer.model.tuned_prompt  # its classes (prompt.json)
        save_model(ema, output_dir / "model_ema", include_text_encoder=include_text)
