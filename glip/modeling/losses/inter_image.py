"""GLIPv2's inter-image region-word contrastive loss, L_inter (the official "shallow contrastive" loss).

Official counterpart: ``ATSSLossComputation`` under ``MODEL.DYHEAD.FUSE_CONFIG.
USE_SHALLOW_CONTRASTIVE_LOSS`` (``maskrcnn_benchmark/modeling/rpn/loss.py``, the FPN
variant) with ``utils/shallow_contrastive_loss_helper.py``; GLIPv2 (arXiv 2206.05836) Sec. 3.

Dimension letters: B images of this process, W processes, N anchors per image (levels
concatenated), A rows (regions) per image, T tokens per prompt, C image feature width,
D text width, H projection width (official ``SHALLOW_CONTRASTIVE_HIDDEN_DIM``, 64).

The computation, over the GLOBAL batch (every process's images and prompts):

1. Rows: each image's ATSS positives, at most ``max_positive`` of them (a random subset),
   padded to A rows (A = the largest kept count over the global batch) with random
   negative anchors (all-zero targets) or masked zero rows
   (:mod:`glip.modeling.losses.region_targets`).
2. Features: the PRE-fusion FPN features at those anchors (or, in the backbone variant,
   the body's stride-16 map ROI-aligned over their boxes), ``Linear(C, H)`` then L2
   normalisation; the text features, L2-normalised, ``Linear(D, H)``, L2-normalised.
   Text: the post-fusion text the official code uses (its dot-product ``embedding``,
   already L2-normalised) or the pre-fusion text the paper describes (``text_source``).
3. Logits: ``cosine / exp(s)``, ``s`` a learnable scalar (official ``SHALLOW_LOG_SCALE``, 0),
   no clamp; padding tokens (and zero-pad rows) at -1e6.
4. Targets (:func:`~glip.modeling.losses.region_targets.region_word_targets`): own image
   = the exact region-token map; other images = same global category.
5. Loss: region->token softmax cross-entropy over every token of the global batch for
   this process's rows, plus token->region over every row for this process's tokens,
   each with multi-positive targets normalised to sum 1 per row (rows without a
   positive add nothing); ``(sum + sum) / 2 / max(global ATSS positives / W, 1) x weight``.
   Under DistributedDataParallel (gradients averaged over processes) this is the loss
   and the gradient of one process holding the whole global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.losses.gather import all_gather, all_reduce, gather_with_grad, rank, world_size
from glip.modeling.losses.region_targets import (
    RegionSelection,
    RegionWordTargets,
    region_candidates,
    region_word_targets,
    select_regions,
)
from glip.ops.roi_align import roi_align

__all__ = [
    "OFFICIAL_INTER_IMAGE_KEYS",
    "InterImageContrastiveLoss",
    "InterImageOutput",
    "flatten_levels",
    "masked_logits",
    "multi_positive_nll",
]

# Official masked_fill value for padding tokens and zero-pad rows.
_MASKED_LOGIT = -1e6

# Official state-dict names (relative to ``rpn.loss_evaluator.``) -> ours.
OFFICIAL_INTER_IMAGE_KEYS = {
    "shallow_log_scale": "log_scale",
    "shallow_contrastive_projection_image.weight": "image_proj.weight",
    "shallow_contrastive_projection_image.bias": "image_proj.bias",
    "shallow_contrastive_projection_text.weight": "text_proj.weight",
    "shallow_contrastive_projection_text.bias": "text_proj.bias",
}


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """L feature maps ``Tensor[B, C, H_l, W_l]`` -> ``Tensor[B, N, C]`` in anchor order
    (level by level, row-major within a level; one anchor per location, as in GLIP)."""
    return torch.cat([m.permute(0, 2, 3, 1).flatten(1, 2) for m in maps], dim=1)  # [B, N, C]


def multi_positive_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """``sum(-P * log_softmax(logits, -1))`` with ``P`` = each row of ``targets`` divided by its
    sum (rows without a positive stay zero): a softmax cross-entropy whose target mass
    is spread evenly over the row's positives (official ``NllSoftMaxLoss`` with
    ``normalized_positive_map``).

    Args:
        logits (Tensor[R, K]): scores.
        targets (Tensor[R, K]): bool.

    Returns:
        Tensor[]: the sum over every element.
    """
    target = targets.to(logits.dtype)
    count = target.sum(dim=-1, keepdim=True)  # [R, 1]
    count = torch.where(count == 0, torch.full_like(count, 1e-6), count)  # official: 0 / 1e-6 = 0
    return (-(target / count) * logits.log_softmax(dim=-1)).sum()


def masked_logits(image_emb: Tensor, text_emb: Tensor, log_scale: Tensor, row_ok: Tensor, text_ok: Tensor) -> Tensor:
    """``Tensor[R, K]``: ``image_emb @ text_emb.T / exp(log_scale)``, -1e6 at padding tokens
    and zero-pad rows (the official masked_fill, no clamp).

    Args:
        image_emb (Tensor[R, H]), text_emb (Tensor[K, H]): L2-normalised projections.
        log_scale (Tensor[1]): the learnable log-temperature ``s``.
        row_ok (Tensor[R]), text_ok (Tensor[K]): bool, False = masked.
    """
    logits = (image_emb @ text_emb.t()) / log_scale.to(image_emb.dtype).exp()  # [R, K]
    logits = logits.masked_fill(~text_ok[None, :], _MASKED_LOGIT)
    return logits.masked_fill(~row_ok[:, None], _MASKED_LOGIT)


@dataclass
class InterImageOutput:
    """L_inter of one process and its internals.

    Attributes:
        loss: ``Tensor[]``, the weighted loss of this process (the official
            ``loss_shallow_contrastive``).
        box_to_token: ``Tensor[]``, the summed region->token term (this process's rows).
        token_to_box: ``Tensor[]``, the summed token->region term (this process's tokens).
        num_pos_avg: the normaliser, ``max(global ATSS positives / W, 1)``.
        logits: ``Tensor[B * A, W * B * T]``, this process's rows against every token (masked).
        targets: ``Tensor[B * A, W * B * T]`` bool, their targets.
        selection: the rows of each image.
    """

    loss: Tensor
    box_to_token: Tensor
    token_to_box: Tensor
    num_pos_avg: float
    logits: Tensor
    targets: Tensor
    selection: RegionSelection


class InterImageContrastiveLoss(nn.Module):
    """L_inter with its projections and temperature (see the module docstring).

    Args:
        image_dim: C, the FPN width (official ``DYHEAD.CHANNELS`` x anchors per location), or
            the body's stride-16 map width in the backbone variant (``SWINT.OUT_CHANNELS[-2]``).
        text_dim: D, the text width (official ``LANGUAGE_BACKBONE.LANG_DIM``).
        hidden_dim: H (official ``SHALLOW_CONTRASTIVE_HIDDEN_DIM``, 64).
        max_positive: rows per image at most (official ``SHALLOW_MAX_POSITIVE_ANCHORS``, 100).
        zero_pad: pad with masked zero rows instead of random negatives
            (official ``USE_SHALLOW_ZERO_PADS``, False).
        weight: official ``SHALLOW_CONTRASTIVE_LOSS_WEIGHT`` (1.0).
        log_scale_init: initial ``s`` (official ``DYHEAD.SHALLOW_LOG_SCALE``, 0.0).
        text_source: ``"fused"`` (post-fusion text, the official code) or ``"encoder"``
            (the text encoder's output before fusion, the paper).
        normalize_text: L2-normalise the text before projecting it (the official input is
            the already normalised dot-product embedding; normalising twice is harmless).
        drop_first_gt_match: reproduce the official ``nonzero(anchors_to_gt_indexs)``
            that leaves anchors matched to box 0 out of the rows (see
            :func:`~glip.modeling.losses.region_targets.region_candidates`). Off by default.
        sum_grads_across_processes: True (default): the gathered features' gradients are
            summed over processes, giving the global-batch gradient. False: the official
            ``gather_tensors``, where each process keeps only its own terms' gradient.
        variant: ``"fpn"`` (official ``USE_SHALLOW_CONTRASTIVE_LOSS``): the rows are the
            pre-fusion FPN features at the selected anchors; ``"backbone"`` (official
            ``USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS``): the rows are the visual body's
            stride-16 map ROI-aligned (1 x 1 output, scale 1/16, adaptive sampling,
            half-pixel ``aligned``: the official ``ROIAlignV2``) over the selected anchors'
            boxes; ``image_dim`` is then that map's width (Swin stage 3).

    The projections follow the official initialisation: Xavier-uniform weights and zero
    biases in the FPN variant; PyTorch's default ``nn.Linear`` initialisation in the
    backbone variant (the official initialisation loop runs under the FPN flag only). The
    parameters live here: a model must register this module so that they reach the
    optimizer and the checkpoint (official names: :data:`OFFICIAL_INTER_IMAGE_KEYS`).
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden_dim: int = 64,
        max_positive: int = 100,
        zero_pad: bool = False,
        weight: float = 1.0,
        log_scale_init: float = 0.0,
        text_source: Literal["fused", "encoder"] = "fused",
        normalize_text: bool = True,
        drop_first_gt_match: bool = False,
        sum_grads_across_processes: bool = True,
        variant: Literal["fpn", "backbone"] = "fpn",
    ) -> None:
        super().__init__()
        if variant not in ("fpn", "backbone") or text_source not in ("fused", "encoder"):
            raise ValueError(f"unknown variant {variant!r} or text_source {text_source!r}")
        if max_positive < 1:
            raise ValueError(f"max_positive must be >= 1, got {max_positive}")
        self.image_proj = nn.Linear(image_dim, hidden_dim)
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        if variant == "fpn":
            for layer in (self.image_proj, self.text_proj):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.variant = variant
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale_init)]))
        self.max_positive = max_positive
        self.zero_pad = zero_pad
        self.weight = weight
        self.text_source = text_source
        self.normalize_text = normalize_text
        self.drop_first_gt_match = drop_first_gt_match
        self.sum_grads_across_processes = sum_grads_across_processes

    @torch.no_grad()
    def select(self, targets: RegionWordTargets, generators: Sequence[torch.Generator]) -> RegionSelection:
        """Each image's rows; image ``b`` draws its N keys from ``generators[b]`` (CPU).

        Every process must call it (one collective gives A, the global row count)."""
        rows, pool = region_candidates(targets.positive, targets.matched_gt, self.drop_first_gt_match)
        batch, num_anchors = rows.shape
        if len(generators) != batch:
            raise ValueError(f"need one generator per image: got {len(generators)} for {batch} images")
        kept = rows.sum(dim=1).clamp(max=self.max_positive)  # [B]
        local_max = kept.max() if batch else kept.new_zeros(())
        num_rows = int(all_reduce(local_max.reshape(1), dist.ReduceOp.MAX))
        keys = torch.stack([torch.rand(num_anchors, generator=g) for g in generators]).to(rows.device)  # [B, N]
        return select_regions(rows, pool, keys, num_rows, self.max_positive, self.zero_pad)

    def forward(
        self,
        region_features: Tensor,
        fused_text: Tensor,
        targets: RegionWordTargets,
        generators: Sequence[torch.Generator],
        encoder_text: Tensor | None = None,
        num_pos_avg: float | None = None,
        anchors: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss_inter": Tensor[]}``, the weighted loss of this process.

        Args:
            region_features: FPN variant: ``Tensor[B, N, C]``, the pre-fusion FPN maps
                (:func:`flatten_levels`); backbone variant: ``Tensor[B, C, H/16, W/16]``, the
                visual body's stride-16 map.
            fused_text (Tensor[B, T, D]): the post-fusion text hidden states.
            targets: :class:`RegionWordTargets` of the batch.
            generators: B CPU generators, one per image (e.g. seeded with
                ``glip.utils.seeding.sample_seed(seed, step, global image index)``).
            encoder_text (Tensor[B, T, D] | None): the text encoder output, needed when
                ``text_source == "encoder"``.
            num_pos_avg: the normaliser when the caller already has it; by default
                ``max(global ATSS positives / W, 1)`` from ``targets.positive``.
            anchors (Tensor[N, 4] | None): every anchor box (levels concatenated, network-input
                pixels), needed by the backbone variant.
        """
        if self.text_source == "encoder" and encoder_text is None:
            raise ValueError("text_source='encoder' needs encoder_text (the text encoder output before fusion)")
        text = encoder_text if self.text_source == "encoder" else fused_text
        selection = self.select(targets, generators)
        return {"loss_inter": self.compute(region_features, text, targets, selection, num_pos_avg, anchors).loss}

    def compute(
        self,
        region_features: Tensor,
        text: Tensor,
        targets: RegionWordTargets,
        selection: RegionSelection,
        num_pos_avg: float | None = None,
        anchors: Tensor | None = None,
    ) -> InterImageOutput:
        """The loss given the rows (arguments as :meth:`forward`; ``text`` is the chosen
        ``Tensor[B, T, D]``). Every process must call it with the same B, T and A."""
        # The official loss runs in fp32 (custom_fwd(cast_inputs=float32)): -1e6 masks and a
        # softmax over W * B * T tokens; float64 inputs (gradcheck) stay float64.
        with torch.autocast(device_type=region_features.device.type, enabled=False):
            rows = self.region_rows(region_features, selection, anchors)  # [B, A, C]
            return self._compute(rows, text, targets, selection, num_pos_avg)

    def region_rows(self, region_features: Tensor, selection: RegionSelection, anchors: Tensor | None) -> Tensor:
        """``Tensor[B, A, C]``: the image feature of each selected row (see ``variant``)."""
        index = selection.anchor_index  # [B, A]
        if self.variant == "fpn":
            channels = region_features.shape[-1]
            return region_features.gather(1, index[..., None].expand(-1, -1, channels))  # [B, A, C]
        if anchors is None:
            raise ValueError("the backbone variant of the inter-image loss needs the anchor boxes")
        batch, num_rows = index.shape
        boxes = anchors.to(region_features.dtype)[index.reshape(-1)]  # [B*A, 4]
        image = torch.arange(batch, device=index.device).repeat_interleave(num_rows)  # [B*A]
        rois = torch.cat([image[:, None].to(boxes.dtype), boxes], dim=1)  # [B*A, 5]
        # Official ROIAlignV2((1, 1), 1/16, 0): half-pixel aligned, adaptive sampling.
        pooled = roi_align(region_features, rois, 1, spatial_scale=1.0 / 16, sampling_ratio=0, aligned=True)
        return pooled.reshape(batch, num_rows, -1)  # [B*A, C, 1, 1] -> [B, A, C]

    def _compute(
        self,
        region_features: Tensor,
        text: Tensor,
        targets: RegionWordTargets,
        selection: RegionSelection,
        num_pos_avg: float | None,
    ) -> InterImageOutput:
        dtype = torch.float64 if region_features.dtype == torch.float64 else torch.float32
        batch = region_features.shape[0]  # region_features: the rows [B, A, C]
        width = text.shape[1]
        num_rows = selection.num_rows
        procs, me = world_size(), rank()
        if num_pos_avg is None:
            total = all_reduce(targets.positive.sum().reshape(1).to(torch.float64))
            num_pos_avg = max(float(total) / procs, 1.0)

        with torch.no_grad():
            row_box = targets.matched_gt.gather(1, selection.anchor_index)  # [B, A]
            row_box = torch.where(selection.is_positive, row_box, torch.full_like(row_box, -1))
            safe_box = row_box.clamp(min=0)  # [B, A]
            row_class = targets.box_class.gather(1, safe_box).masked_fill(row_box < 0, -1)  # [B, A]
            row_tokens = targets.box_tokens.gather(1, safe_box[..., None].expand(-1, -1, width))  # [B, A, T]
            row_tokens = row_tokens & (row_box >= 0)[..., None]
            row_class, row_tokens = row_class.reshape(-1), row_tokens.reshape(-1, width)  # [B*A], [B*A, T]
            local_image = (me * batch + torch.arange(batch, device=row_class.device)).repeat_interleave(num_rows)
            all_image = torch.arange(procs * batch, device=row_class.device)  # [W*B]
            token_class_all = all_gather(targets.token_class)  # [W*B, T]
            text_ok_all = all_gather(targets.text_mask != 0).reshape(-1)  # [W*B*T]
            row_ok_all = all_gather(selection.valid.reshape(-1))  # [W*B*A]
            # This process's rows against every prompt, and every row against this process's prompts.
            targets_rows = region_word_targets(row_class, local_image, row_tokens, token_class_all, all_image)
            targets_cols = region_word_targets(
                all_gather(row_class),
                all_image.repeat_interleave(num_rows),
                all_gather(row_tokens),
                targets.token_class,
                all_image[me * batch : (me + 1) * batch],
            )  # [W*B*A, B*T]

        image_emb = F.normalize(self.image_proj(region_features.to(dtype)), p=2, dim=-1)  # [B, A, H]
        image_emb = image_emb * selection.valid[..., None]  # zero pads are zero vectors
        text = text.to(dtype)
        if self.normalize_text:
            text = F.normalize(text, p=2, dim=-1)
        text_emb = F.normalize(self.text_proj(text), p=2, dim=-1)  # [B, T, H]
        image_emb = image_emb.flatten(0, 1)  # [B*A, H]
        text_emb = text_emb.flatten(0, 1)  # [B*T, H]
        image_all = gather_with_grad(image_emb, self.sum_grads_across_processes)  # [W*B*A, H]
        text_all = gather_with_grad(text_emb, self.sum_grads_across_processes)  # [W*B*T, H]

        row_ok = selection.valid.reshape(-1)  # [B*A]
        logits_rows = masked_logits(image_emb, text_all, self.log_scale, row_ok, text_ok_all)  # [B*A, W*B*T]
        if procs == 1:
            logits_cols = logits_rows  # the whole matrix already
        else:
            text_ok = (targets.text_mask != 0).reshape(-1)  # [B*T]
            logits_cols = masked_logits(image_all, text_emb, self.log_scale, row_ok_all, text_ok)  # [W*B*A, B*T]

        box_to_token = multi_positive_nll(logits_rows, targets_rows)
        token_to_box = multi_positive_nll(logits_cols.t(), targets_cols.t())
        loss = (box_to_token + token_to_box) / 2 / num_pos_avg * self.weight
        return InterImageOutput(
            loss=loss,
            box_to_token=box_to_token,
            token_to_box=token_to_box,
            num_pos_avg=num_pos_avg,
            logits=logits_rows,
            targets=targets_rows,
            selection=selection,
        )
