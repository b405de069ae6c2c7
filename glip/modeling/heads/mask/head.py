"""The vision-language mask head on the fused trunk (GLIPv2 segmentation).

Official counterpart: ``ROIMaskHead`` (``maskrcnn_benchmark/modeling/roi_heads/mask_head/``)
with ``PREDICTOR: VLMaskRCNNC4Predictor`` and ``RPN.RETURN_FUSED_FEATURES``: regions are
ROI-pooled from the post-fusion P3-P7 maps, a feature extractor and the VL predictor give
per-token mask logits, and a phrase's mask is the average of its tokens' logits.

Training (:meth:`MaskHead.loss`): proposals are the detector's boxes (decoded from the
grounding head's outputs, as the official ATSS post-processing in training mode: every
anchor a candidate, top ``pre_nms_top_n`` by score, NMS, ``detections`` kept) plus the
ground-truth boxes; a proposal with IoU >= ``fg_iou_threshold`` with a ground-truth box
*that has a mask* (and a non-empty token row) is positive and learns that box's mask,
cropped to the proposal and resized to M x M. Unlike the official code, the batch may hold
any number of images, and boxes without a mask are left out (the official data turns them
into box-shaped masks).

Inference (:meth:`MaskHead.predict`): given detections (boxes in network-input pixels and
the tokens of their labels), mask probabilities ``Tensor[N, M, M]``; pasting into the
image is :func:`glip.ops.masks.paste_masks`.

Dimension letters: B images, L levels, C channels, T tokens, D text width, G
ground-truth boxes, P proposals, R positive regions, S pooled size (14), M mask size (28).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import Head, LossInputs
from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.ops.boxes import box_iou, clip_boxes
from glip.ops.masks import box_extent, crop_masks
from glip.ops.nms import nms
from glip.ops.roi_align import multilevel_roi_align
from glip.structures.outputs import HeadOutputs
from glip.structures.targets import GroundingTargets

__all__ = ["MaskHead", "MaskOutput", "MaskTargets", "detector_proposals"]

GROUNDING = "grounding"


@dataclass
class MaskOutput:
    """What the mask head's forward keeps for its loss and inference: the trunk's
    post-fusion maps and text (the regions depend on boxes known only later).

    Attributes:
        visual: L tensors ``Tensor[B, C, H_l, W_l]``.
        text: ``Tensor[B, T, D]``, the tower's text hidden states.
    """

    visual: list[Tensor]
    text: Tensor


@dataclass
class MaskTargets:
    """The positive regions of a batch and their targets.

    Attributes:
        boxes: B tensors ``Tensor[R_b, 4]``, the positive proposals (network-input pixels).
        token_map: ``Tensor[R, T]`` bool, the tokens of each region's matched phrase.
        masks: ``Tensor[R, M, M]`` float {0, 1}, the matched mask cropped to the region.
        image_index: ``Tensor[R]`` int64.
    """

    boxes: list[Tensor]
    token_map: Tensor
    masks: Tensor
    image_index: Tensor

    def __len__(self) -> int:
        return int(self.image_index.shape[0])


@torch.no_grad()
def detector_proposals(
    head: HeadOutputs,
    anchors: Sequence[Tensor],
    text_mask: Tensor,
    image_extent: tuple[int, int],
    pre_nms_top_n: int = 3000,
    post_nms_top_n: int = 100,
    nms_thresh: float = 0.6,
    box_coder: BoxCoder | None = None,
) -> list[Tensor]:
    """The detector's boxes of each image, class-agnostic (training proposals).

    Score of an anchor: ``sigmoid(max over the prompt's tokens of its logit) * sigmoid(centerness)``.
    The ``pre_nms_top_n`` best anchors of the image (all levels) are decoded, clipped to
    the padded input, and NMS at ``nms_thresh`` keeps at most ``post_nms_top_n`` boxes.
    The official training-mode ATSS post-processing (threshold 0, pre-NMS 3000 per level,
    post-NMS 1000, per-label NMS 0.6) differs in scoring per label; only the boxes matter
    here, and only those matching a ground-truth box at IoU >= 0.5 are used.

    Args:
        head: the grounding head's outputs (one anchor per location).
        anchors: L tensors ``Tensor[H_l * W_l, 4]``.
        text_mask: ``Tensor[B, T]``, non-zero on the prompt's tokens.
        image_extent: ``(H, W)`` of the padded network input.

    Returns:
        B tensors ``Tensor[P_b, 4]`` (inclusive corners, network-input pixels).
    """
    coder = box_coder if box_coder is not None else BoxCoder()
    valid = text_mask.bool()[:, None, :]  # [B, 1, T]
    deltas, scores = [], []
    for reg, ctr, logits in zip(head.box_regression, head.centerness, head.dot_product_logits):
        batch = reg.shape[0]
        deltas.append(reg.float().permute(0, 2, 3, 1).reshape(batch, -1, 4))  # [B, H*W, 4]
        token = logits.float().masked_fill(~valid, float("-inf")).amax(-1).sigmoid()  # [B, H*W]
        scores.append(token * ctr.float().reshape(batch, -1).sigmoid())  # [B, H*W]
    all_deltas, all_scores = torch.cat(deltas, 1), torch.cat(scores, 1)  # [B, N, 4], [B, N]
    all_anchors = torch.cat([a.to(all_deltas.device) for a in anchors])  # [N, 4]
    out = []
    for b in range(all_scores.shape[0]):
        top, idx = all_scores[b].topk(min(pre_nms_top_n, all_scores.shape[1]))  # [K]
        boxes = clip_boxes(coder.decode(all_deltas[b, idx], all_anchors[idx]), image_extent)  # [K, 4]
        keep = nms(boxes, top, nms_thresh)[:post_nms_top_n]
        out.append(boxes[keep])
    return out


class MaskHead(Head):
    """ROI pooling on the post-fusion maps, a feature extractor and the VL predictor.

    Args:
        extractor: pooled regions ``[R, C, S, S]`` -> features (:mod:`.extractors`).
        predictor: a :class:`~glip.modeling.heads.mask.predictor.VLMaskPredictor`.
        scales: L spatial scales of the trunk's maps (official ``POOLER_SCALES``, 1/8..1/128).
        pooler_resolution: S (official ``POOLER_RESOLUTION``, 14).
        sampling_ratio: ROIAlign samples per bin (official ``POOLER_SAMPLING_RATIO``, 0 = adaptive).
        resolution: M (official ``RESOLUTION``; 28 = 2 S, the predictor's deconvolution).
        fg_iou_threshold: a proposal is positive at IoU >= this (official ``ROI_HEADS.FG_IOU_THRESHOLD``).
        detections: detector boxes per image added to the ground truth as proposals
            (0: ground-truth boxes only); see :func:`detector_proposals`.
        pre_nms_top_n, nms_thresh: :func:`detector_proposals`'s (official 3000 and 0.6).

    Parameters: ``extractor.*`` (official ``roi_heads.mask.feature_extractor.*``),
    ``predictor.*`` (official ``roi_heads.mask.predictor.*``).
    """

    linear_probe = ("predictor.dot_product_projection_text.", "predictor.log_scale", "predictor.bias_lang")

    def __init__(
        self,
        extractor: nn.Module,
        predictor: nn.Module,
        scales: Sequence[float] = (1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128),
        pooler_resolution: int = 14,
        sampling_ratio: int = 0,
        resolution: int = 28,
        fg_iou_threshold: float = 0.5,
        detections: int = 100,
        pre_nms_top_n: int = 3000,
        nms_thresh: float = 0.6,
    ) -> None:
        super().__init__()
        if resolution != 2 * pooler_resolution:
            raise ValueError(
                f"the mask resolution ({resolution}) must be twice the pooler resolution ({pooler_resolution}): "
                "the predictor's 2x2 stride-2 deconvolution doubles it"
            )
        self.extractor = extractor
        self.predictor = predictor
        self.scales = tuple(float(s) for s in scales)
        self.pooler_resolution = pooler_resolution
        self.sampling_ratio = sampling_ratio
        self.resolution = resolution
        self.fg_iou_threshold = fg_iou_threshold
        self.detections = detections
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any] | None = None) -> MaskOutput:
        return MaskOutput(visual=list(trunk.visual), text=trunk.text)

    def region_logits(self, output: MaskOutput, boxes: Sequence[Tensor], token_map: Tensor) -> Tensor:
        """Phrase mask logits of regions.

        Args:
            output: the head's forward output.
            boxes: B tensors ``Tensor[R_b, 4]`` in network-input pixels.
            token_map: ``Tensor[R, T]`` bool, the tokens of each region's phrase (regions
                in the order of the concatenated ``boxes``).

        Returns:
            Tensor[R, M, M]: the token-averaged logits.
        """
        visual = output.visual
        if len(visual) != len(self.scales):
            raise ValueError(f"the mask head pools {len(self.scales)} levels but the trunk gave {len(visual)}")
        pooled = multilevel_roi_align(
            visual, boxes, self.pooler_resolution, self.scales, self.sampling_ratio
        )  # [R, C, S, S]
        image_index = torch.cat(
            [torch.full((len(b),), i, dtype=torch.int64, device=pooled.device) for i, b in enumerate(boxes)]
        )  # [R]
        return self.predictor.phrase_logits(self.extractor(pooled), output.text, image_index, token_map)

    @torch.no_grad()
    def prepare_targets(self, proposals: Sequence[Tensor], targets: Sequence[GroundingTargets]) -> MaskTargets:
        """Matches proposals to the ground-truth boxes that have masks (IoU with the
        official ``+1`` areas, >= ``fg_iou_threshold``, highest IoU wins) and crops
        their masks. Proposals matched to a box whose token row is empty are dropped, as
        the official positives are the rows with a token."""
        boxes, token_maps, masks, index = [], [], [], []
        for b, (props, tgt) in enumerate(zip(proposals, targets)):
            device = tgt.boxes.device
            has = tgt.mask_flags() & tgt.positive_map.any(dim=1)  # [G]
            if tgt.masks is None or not bool(has.any()) or props.shape[0] == 0:
                boxes.append(tgt.boxes.new_zeros((0, 4)))
                continue
            gt_idx = torch.nonzero(has).squeeze(1)  # [G']
            iou = box_iou(props.to(device).float(), tgt.boxes[gt_idx].float(), offset=1.0)  # [P, G']
            best, match = iou.max(dim=1)  # [P]
            pos = best >= self.fg_iou_threshold
            matched = gt_idx[match[pos]]  # [R_b]
            pos_boxes = props.to(device)[pos].float()  # [R_b, 4]
            boxes.append(pos_boxes)
            token_maps.append(tgt.positive_map[matched])
            masks.append(crop_masks(tgt.masks, matched, box_extent(pos_boxes), self.resolution))
            index.append(torch.full((len(matched),), b, dtype=torch.int64, device=device))
        ref = targets[0].boxes
        width = targets[0].num_tokens
        return MaskTargets(
            boxes=boxes,
            token_map=torch.cat(token_maps)
            if token_maps
            else torch.zeros((0, width), dtype=torch.bool, device=ref.device),
            masks=torch.cat(masks) if masks else ref.new_zeros((0, self.resolution, self.resolution)),
            image_index=torch.cat(index) if index else torch.zeros((0,), dtype=torch.int64, device=ref.device),
        )

    def proposals(self, inputs: LossInputs) -> list[Tensor]:
        """Training proposals: the detector's boxes (when ``detections`` > 0 and the
        grounding head ran) followed by the ground-truth boxes, per image."""
        gt = [t.boxes for t in inputs.targets]
        head = inputs.outputs.get(GROUNDING)
        if self.detections <= 0 or head is None:
            return [g.float() for g in gt]
        height, width = head.box_regression[0].shape[-2:]
        # The finest level's stride is 1 / scales[0]: its grid covers the padded input.
        extent = (int(round(height / self.scales[0])), int(round(width / self.scales[0])))
        found = detector_proposals(
            head, inputs.anchors, inputs.text_mask, extent, self.pre_nms_top_n, self.detections, self.nms_thresh
        )
        return [torch.cat([d.to(g.device).float(), g.float()]) for d, g in zip(found, gt)]

    def loss(self, output: MaskOutput, inputs: LossInputs) -> dict[str, Tensor]:
        """``loss_mask``: BCE-with-logits of the phrase-averaged logits against the cropped
        masks, averaged over every pixel of every positive region of the batch (official
        ``MaskRCNNLossComputation``, VL version). Zero (connected to the head's
        parameters) without any positive region."""
        has_masks = any(t.masks is not None and bool(t.mask_flags().any()) for t in inputs.targets)
        targets = self.prepare_targets(self.proposals(inputs), inputs.targets) if has_masks else None
        if targets is None or len(targets) == 0:
            return {"loss_mask": sum(p.sum() for p in self.parameters()) * 0.0}
        logits = self.region_logits(output, targets.boxes, targets.token_map)  # [R, M, M]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # BCE in float32: log-sigmoid of large logits loses too much in half precision
        masks = targets.masks.to(device=logits.device, dtype=logits.dtype)
        return {"loss_mask": F.binary_cross_entropy_with_logits(logits, masks)}

    @torch.no_grad()
    def predict(self, output: MaskOutput, boxes: Sequence[Tensor], token_maps: Sequence[Tensor]) -> list[Tensor]:
        """Mask probabilities of detections (official ``MaskPostProcessor``: the label's
        tokens' logits averaged, then the sigmoid).

        Args:
            output: the head's forward output on the batch.
            boxes: B tensors ``Tensor[N_b, 4]`` in network-input pixels.
            token_maps: B tensors ``Tensor[N_b, T]`` bool, each detection's label tokens.

        Returns:
            B tensors ``Tensor[N_b, M, M]`` in [0, 1].
        """
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [b.new_zeros((0, self.resolution, self.resolution)) for b in boxes]
        device = output.visual[0].device
        boxes = [b.to(device).to(output.visual[0].dtype) for b in boxes]
        token_map = torch.cat([t.to(device).bool() for t in token_maps])  # [N, T]
        probs = self.region_logits(output, boxes, token_map).float().sigmoid()  # [N, M, M]
        return list(probs.split(counts))
