"""Optimiser, learning-rate schedule and gradient clipping, with the official rules.

Official counterparts: ``make_optimizer`` / ``make_lr_scheduler``
(``maskrcnn_benchmark/solver/build.py``) and ``WarmupMultiStepLR`` /
``WarmupCosineAnnealingLR`` (``solver/lr_scheduler.py``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from glip.config import SolverConfig
from glip.modeling.fusion.bi_attention import BiAttentionBlock
from glip.modeling.fusion.dyhead import DyConv
from glip.modeling.language.text_layer import TextLayer

__all__ = [
    "WarmupSchedule",
    "build_optimizer",
    "build_schedule",
    "clip_grad_norm",
    "lr_milestones",
    "param_group_settings",
    "param_groups",
    "parameter_parts",
]

# The parts the official rules single out by module (official key prefixes
# "language_backbone." and "backbone.body."); found by module identity, not by name.
LANGUAGE, BODY, FUSION, TOWER = "language", "body", "fusion", "tower"


def _official_is_norm(name: str) -> bool:
    """Whether the official key of our parameter ``name`` contains ``norm``/``Norm``.

    Our DyConv group norms are ``trunk.blocks.<i>.dyconv.<branch>.norm.*``; the official
    keys are ``...DyConv.<j>.bn.*`` and get no norm rule, so neither do ours.
    """
    if ".dyconv." in name and ".norm." in name:
        return False
    return "norm" in name or "Norm" in name


def param_group_settings(name: str, solver: SolverConfig, part: str = "") -> tuple[float, float]:
    """``(lr, weight_decay)`` of one parameter, as the official ``make_optimizer``:

    - ``part`` :data:`LANGUAGE` (the text encoder) uses ``lang_lr``; :data:`BODY` (the
      visual body) ``base_lr * backbone_body_lr_factor``; :data:`FUSION` (the fusion
      tower's text-side layers: X-MHA blocks and in-head BERT layers) ``base_lr *
      fusion_lr_factor`` (not an official rule; the default factor 1.0 is the official
      behaviour); :data:`TOWER` (the fusion tower's visual DyConv branches) ``base_lr *
      tower_lr_factor`` (not official either; default 1.0);
    - a name containing ``bias`` gets ``lr * bias_lr_factor`` and ``weight_decay_bias``;
    - a name containing ``norm``/``Norm`` gets ``weight_decay * weight_decay_norm_factor``.
    """
    lr, weight_decay = solver.base_lr, solver.weight_decay
    if part == LANGUAGE:
        lr = solver.lang_lr
    if part == BODY:
        lr = solver.base_lr * solver.backbone_body_lr_factor
    if part == FUSION:
        lr = solver.base_lr * solver.fusion_lr_factor
    if part == TOWER:
        lr = solver.base_lr * solver.tower_lr_factor
    if "bias" in name:
        lr *= solver.bias_lr_factor
        weight_decay = solver.weight_decay_bias
    if _official_is_norm(name):
        weight_decay *= solver.weight_decay_norm_factor
    return lr, weight_decay


def parameter_parts(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> part`` for the parts the rules single out: the parameters of
    ``model.text_encoder`` (:data:`LANGUAGE`), of ``model.backbone.body`` (:data:`BODY`),
    when the model has them, of every X-MHA fusion block and in-head BERT layer
    (:data:`FUSION`) and of every DyConv (:data:`TOWER`)."""
    parts: dict[int, str] = {}
    text = getattr(model, "text_encoder", None)
    body = getattr(getattr(model, "backbone", None), "body", None)
    for module, part in ((text, LANGUAGE), (body, BODY)):
        if isinstance(module, nn.Module):
            parts.update({id(p): part for p in module.parameters()})
    for module in model.modules():
        if isinstance(module, (BiAttentionBlock, TextLayer)):
            parts.update({id(p): FUSION for p in module.parameters()})
        elif isinstance(module, DyConv):
            parts.update({id(p): TOWER for p in module.parameters()})
    return parts


def param_groups(model: nn.Module, solver: SolverConfig) -> list[dict[str, Any]]:
    """Trainable parameters grouped by their ``(lr, weight_decay)``, in first-seen order.

    The official code makes one group per parameter; grouping equal settings gives the
    same updates with fewer groups. Each group also records ``names``. Any new head's
    parameters get the base rules (base lr, bias and norm rules) with no edit here.
    """
    parts = parameter_parts(model)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, wd = param_group_settings(name, solver, parts.get(id(param), ""))
        group = groups.setdefault((lr, wd), {"params": [], "names": [], "lr": lr, "weight_decay": wd})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """AdamW (official ``ADAMW``, torch defaults betas/eps) or SGD with momentum."""
    groups = param_groups(model, solver)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    kind = solver.optimizer.lower()
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=solver.base_lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum)
    raise ValueError(f"unknown solver.optimizer {solver.optimizer!r} (expected 'adamw' or 'sgd')")


def lr_milestones(steps: Sequence[float], max_iter: int) -> list[int]:
    """Official rule: a step below 1 is a fraction of ``max_iter`` (rounded), else an iteration."""
    return [round(s * max_iter) if s < 1 else int(s) for s in steps]


@dataclass
class WarmupSchedule:
    """Warmup then multi-step decay or cosine annealing, per parameter group.

    ``lrs(t)`` are the rates used by optimiser step ``t + 1`` (``t`` steps done), equal to
    the official scheduler's ``get_lr()`` at ``last_epoch = t``:

    - warmup (``t < warmup_iters``): factor ``warmup_factor`` (constant) or
      ``warmup_factor * (1 - t / warmup_iters) + t / warmup_iters`` (linear);
    - multi-step: ``base * warmup * gamma ** bisect_right(milestones, t)``;
    - cosine, after warmup: ``min_lr + (base - min_lr) * (1 + cos(pi * (t - warmup_iters) / max_iter)) / 2``.

    Attributes:
        base_lrs: each group's initial rate.
        step_count: optimiser steps done (``t``); the only state.
    """

    base_lrs: list[float]
    max_iter: int
    milestones: list[int]
    gamma: float = 0.1
    warmup_factor: float = 1.0 / 3
    warmup_iters: int = 500
    warmup_method: str = "linear"
    cosine: bool = False
    min_lr: float = 0.0
    step_count: int = 0

    def __post_init__(self) -> None:
        if self.warmup_method not in ("constant", "linear"):
            raise ValueError(f"warmup_method must be 'constant' or 'linear', got {self.warmup_method!r}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must increase, got {self.milestones}")

    def warmup(self, t: int) -> float:
        if t >= self.warmup_iters:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        alpha = float(t) / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def lrs(self, t: int) -> list[float]:
        if self.cosine and t >= self.warmup_iters:
            c = (1 + math.cos(math.pi * (t - self.warmup_iters) / self.max_iter)) / 2
            return [self.min_lr + (base - self.min_lr) * c for base in self.base_lrs]
        factor = self.warmup(t)
        if not self.cosine:
            factor *= self.gamma ** bisect_right(self.milestones, t)
        return [base * factor for base in self.base_lrs]

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """Writes the rates of the next step into the optimiser's groups."""
        for group, lr in zip(optimizer.param_groups, self.lrs(self.step_count)):
            group["lr"] = lr

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Counts one optimiser step and sets the next rates."""
        self.step_count += 1
        self.apply(optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]


def build_schedule(optimizer: torch.optim.Optimizer, solver: SolverConfig, max_iter: int) -> WarmupSchedule:
    """The schedule of ``solver`` over ``max_iter`` steps; sets the first step's rates.
    With ``use_autostep`` there are no milestones: the rates drop on evaluation plateaus
    (the trainer scales ``base_lrs``), as the official ``WarmupReduceLROnPlateau``."""
    schedule = WarmupSchedule(
        base_lrs=[float(g.setdefault("initial_lr", g["lr"])) for g in optimizer.param_groups],
        max_iter=max_iter,
        milestones=[] if solver.use_autostep else lr_milestones(solver.steps, max_iter),
        gamma=solver.gamma,
        warmup_factor=solver.warmup_factor,
        warmup_iters=solver.warmup_iters,
        warmup_method=solver.warmup_method,
        cosine=solver.use_cosine,
        min_lr=solver.min_lr,
    )
    schedule.apply(optimizer)
    return schedule


def clip_grad_norm(parameters: Iterable[torch.Tensor], solver: SolverConfig) -> torch.Tensor:
    """Official full-model clipping (``CLIP_GRADIENTS`` with ``CLIP_TYPE: full_model``): one
    norm over every parameter. Returns the total norm before clipping (computed, not
    clipped, when clipping is off), so a non-finite gradient can be detected."""
    clip = solver.clip_gradients
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    enabled = clip.enabled and clip.clip_value > 0
    if enabled and clip.clip_type != "full_model":
        raise ValueError(f"solver.clip_gradients.clip_type {clip.clip_type!r}: only 'full_model' is implemented")
    max_norm = clip.clip_value if enabled else float("inf")
    return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=clip.norm_type)
