"""From head outputs to per-image detections, as the official ``ATSSPostProcessor``.

Dimension letters: B images, L levels, N anchors of a level (``H * W * A``), T text
tokens, P phrases (labels), C the width of the official score tensor (``num_classes``).

Per level and image (official ``forward_for_single_feature_map``):

1. ``sigmoid`` of the dot-product logits; the score of label ``j`` (1-based) is the
   MEAN (or MAX) over its token columns; labels without a phrase score 0.
2. Candidates are the (anchor, label) pairs with score ``> pre_nms_thresh``.
3. ``k = min(#candidates, pre_nms_top_n)`` of them are kept by the top-k of
   ``score * sigmoid(centerness)``.
4. Their anchors' deltas are decoded, clipped to the unpadded resized image
   (``[0, w - 1] x [0, h - 1]``), boxes with a side ``< min_size`` (inclusive pixels)
   dropped, and the score becomes ``sqrt(score * sigmoid(centerness))``.

Over all levels (official ``select_over_all_levels``, with the GPU ``ml_nms``): the
levels are concatenated, label-aware NMS (IoU with ``+1`` areas ``> nms_thresh``)
runs, and ``detections_per_img`` boxes are kept by ``kthvalue`` of the scores, keeping
every score ``>=`` the k-th (ties can keep more).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.ops.boxes import clip_boxes, remove_small_boxes, rescale_boxes
from glip.ops.multiclass_nms import multiclass_nms
from glip.structures import Detections
from glip.text import TokenizedPrompt

__all__ = ["GroundingPostProcessor", "class_agnostic_nms", "label_token_index", "merge_chunks"]


@dataclass
class _Candidates:
    """Unsorted boxes of one image (resized-image pixels)."""

    boxes: Tensor  # [K, 4]
    scores: Tensor  # [K]
    labels: Tensor  # [K] int64, 1-based

    @staticmethod
    def cat(parts: Sequence[_Candidates]) -> _Candidates:
        return _Candidates(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.labels for p in parts]),
        )

    def select(self, index: Tensor) -> _Candidates:
        return _Candidates(self.boxes[index], self.scores[index], self.labels[index])


def label_token_index(
    positive_map: Tensor | Mapping[int, Sequence[int]], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """The token columns of each label, padded into one index tensor.

    Args:
        positive_map: ``Tensor[P, T]`` (row ``j - 1`` is label ``j``; token ``t`` belongs
            to it where the entry is ``> 0``), or the official ``{label: [token ids]}``
            (1-based labels; ``P`` is the largest label, missing labels have no token).
        device: where to put the result.

    Returns:
        ``(index, valid)``: ``Tensor[P, K]`` int64 token ids and ``Tensor[P, K]`` bool,
        ``K`` the most tokens of any label (at least 1); padded entries are 0 / False.
    """
    if isinstance(positive_map, Tensor):
        tokens = [torch.nonzero(row > 0).squeeze(1).tolist() for row in positive_map]
    else:
        num_labels = max(positive_map, default=0)
        if min(positive_map, default=1) < 1:
            raise ValueError(f"positive_map labels are 1-based; got {sorted(positive_map)}")
        tokens = [[int(t) for t in positive_map.get(j, [])] for j in range(1, num_labels + 1)]
    width = max((len(t) for t in tokens), default=0) or 1
    index = torch.zeros((len(tokens), width), dtype=torch.int64)
    valid = torch.zeros((len(tokens), width), dtype=torch.bool)
    for row, ids in enumerate(tokens):
        index[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        valid[row, : len(ids)] = True
    return index.to(device), valid.to(device)


class GroundingPostProcessor:
    """Decodes GLIP head outputs into detections (official ATSS post-processing).

    Args:
        pre_nms_thresh: label scores must exceed this to be candidates
            (``MODEL.ATSS.INFERENCE_TH``; 0.05 in the official configs).
        pre_nms_top_n: most candidates kept per level and image (``PRE_NMS_TOP_N``, 1000).
        nms_thresh: IoU above which a box of the same label is suppressed (``NMS_TH``,
            0.6); ``<= 0`` disables NMS, as in the official ``boxlist_ml_nms``.
        detections_per_img: boxes kept per image after NMS (``DETECTIONS_PER_IMG``, 100);
            ``<= 0`` keeps all.
        min_size: smallest kept box side, inclusive pixels (0, hard-coded in the official
            ``make_atss_postprocessor``).
        score_agg: how token scores make a label score: ``"MEAN"`` (``MODEL.DYHEAD.SCORE_AGG``,
            the default) or ``"MAX"``.
        box_coder: the head's box coder (default: the official one).
    """

    def __init__(
        self,
        pre_nms_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        min_size: float = 0.0,
        score_agg: str = "MEAN",
        box_coder: BoxCoder | None = None,
    ) -> None:
        if score_agg not in ("MEAN", "MAX"):
            raise ValueError(f"score_agg must be 'MEAN' or 'MAX', got {score_agg!r}")
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        self.score_agg = score_agg
        self.box_coder = box_coder if box_coder is not None else BoxCoder()

    @torch.no_grad()
    def __call__(
        self,
        box_regression: list[Tensor],
        centerness: list[Tensor],
        dot_product_logits: list[Tensor],
        anchors: list[Tensor],
        positive_map: Tensor | Mapping[int, Sequence[int]],
        num_classes: int,
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """Detections of each image.

        Args:
            box_regression: L tensors ``Tensor[B, 4 * A, H_l, W_l]``, the box deltas.
            centerness: L tensors ``Tensor[B, A, H_l, W_l]``, centerness logits.
            dot_product_logits: L tensors ``Tensor[B, H_l * W_l * A, T]``, region-token logits.
            anchors: L tensors ``Tensor[H_l * W_l * A, 4]``, the padded-grid anchors
                (shared by all images).
            positive_map: the P phrases' tokens, see :func:`label_token_index`; the
                same prompt for every image.
            num_classes: C, the width of the official score tensor (``DYHEAD.NUM_CLASSES - 1``,
                80). Labels beyond it cannot be scored: ``P > C`` raises ``ValueError``
                (the official code fails there with an ``IndexError``).
            image_sizes: B pairs ``(h, w)``, each image's unpadded resized size.
            original_sizes: optional B pairs ``(h, w)``; when given, boxes are rescaled to
                them as the official ``BoxList.resize`` (the demo's output).

        Returns:
            B :class:`Detections`, sorted by descending score, with empty ``phrases``;
            boxes in resized-image pixels and ``image_size`` the resized ``(h, w)``, or
            in ``original_sizes`` pixels when those are given.
        """
        per_level = self._level_candidates(
            box_regression, centerness, dot_product_logits, anchors, positive_map, num_classes, image_sizes
        )  # [L][B]
        results = []
        for b, image_size in enumerate(image_sizes):
            kept = self._select_over_levels(_Candidates.cat([level[b] for level in per_level]))
            boxes, size = kept.boxes, tuple(image_size)
            if original_sizes is not None:
                size = tuple(original_sizes[b])
                boxes = rescale_boxes(boxes, image_size, size)
            order = torch.sort(kept.scores, descending=True, stable=True).indices
            results.append(Detections(boxes[order], kept.scores[order], kept.labels[order], [], size))
        return results

    @torch.no_grad()
    def per_level(
        self,
        box_regression: list[Tensor],
        centerness: list[Tensor],
        dot_product_logits: list[Tensor],
        anchors: list[Tensor],
        positive_map: Tensor | Mapping[int, Sequence[int]],
        num_classes: int,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[list[Detections]]:
        """The boxes of each level before NMS (official ``post_per_level``), ``[L][B]``.

        Arguments as :meth:`__call__`. Each :class:`Detections` is sorted by score and
        in resized-image pixels.
        """
        per_level = self._level_candidates(
            box_regression, centerness, dot_product_logits, anchors, positive_map, num_classes, image_sizes
        )
        out = []
        for level in per_level:
            row = []
            for cand, size in zip(level, image_sizes):
                order = torch.sort(cand.scores, descending=True, stable=True).indices
                row.append(Detections(cand.boxes[order], cand.scores[order], cand.labels[order], [], tuple(size)))
            out.append(row)
        return out

    def _level_candidates(
        self,
        box_regression: list[Tensor],
        centerness: list[Tensor],
        dot_product_logits: list[Tensor],
        anchors: list[Tensor],
        positive_map: Tensor | Mapping[int, Sequence[int]],
        num_classes: int,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[list[_Candidates]]:
        """Steps 1-4 for every level and image, ``[L][B]``, in the official (unsorted) order."""
        levels = len(box_regression)
        if not (len(centerness) == len(dot_product_logits) == len(anchors) == levels):
            raise ValueError(
                "expected one tensor per level in each input; got "
                f"{levels}, {len(centerness)}, {len(dot_product_logits)}, {len(anchors)}"
            )
        device = box_regression[0].device
        token_index, token_valid = label_token_index(positive_map, device)
        if token_index.shape[0] > num_classes:
            raise ValueError(
                f"the prompt has {token_index.shape[0]} phrases but the score tensor has only "
                f"num_classes={num_classes} slots (the official model scores at most that many)"
            )
        return [
            self._level(reg, ctr, logits, anc.to(device), token_index, token_valid, num_classes, image_sizes)
            for reg, ctr, logits, anc in zip(box_regression, centerness, dot_product_logits, anchors)
        ]

    def _label_scores(self, logits: Tensor, token_index: Tensor, token_valid: Tensor, num_classes: int) -> Tensor:
        """``Tensor[B, N, T]`` logits -> ``Tensor[B, N, C]`` label scores (zero beyond the P labels)."""
        probs = logits.sigmoid()
        gathered = probs[:, :, token_index]  # [B, N, P, K]
        if self.score_agg == "MEAN":
            # Sum then divide, as Tensor.mean over the token columns (bitwise equal to it).
            counts = token_valid.sum(-1).clamp(min=1)  # [P]
            label_scores = gathered.masked_fill(~token_valid, 0.0).sum(-1) / counts  # [B, N, P]
        else:
            label_scores = gathered.masked_fill(~token_valid, float("-inf")).amax(-1)  # [B, N, P]
            label_scores = label_scores.masked_fill(~token_valid.any(-1), 0.0)
        scores = probs.new_zeros((*probs.shape[:2], num_classes))  # [B, N, C]
        scores[:, :, : label_scores.shape[-1]] = label_scores
        return scores

    def _level(
        self,
        box_regression: Tensor,
        centerness: Tensor,
        logits: Tensor,
        anchors: Tensor,
        token_index: Tensor,
        token_valid: Tensor,
        num_classes: int,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[_Candidates]:
        # Scores, exp() of the deltas and IoUs need float32 range and precision (the official
        # inference runs in float32); a no-op for float32 inputs.
        box_regression, centerness, logits = box_regression.float(), centerness.float(), logits.float()
        batch, _, height, width = box_regression.shape
        num_anchors = box_regression.shape[1] // 4
        # [B, A*4, H, W] -> [B, H*W*A, 4], anchors innermost as in the anchor grid.
        deltas = box_regression.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
        # [B, A, H, W] -> [B, H*W*A]
        ctr = centerness.view(batch, num_anchors, height, width).permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
        n = deltas.shape[1]
        if logits.shape[1] != n or anchors.shape[0] != n:
            raise ValueError(
                f"level has {n} anchors but logits {tuple(logits.shape)} and anchors {tuple(anchors.shape)}"
            )

        scores = self._label_scores(logits, token_index, token_valid, num_classes)  # [B, N, C]
        candidates = (scores > self.pre_nms_thresh).reshape(batch, -1)  # [B, N*C]
        ranked = (scores * ctr[:, :, None]).reshape(batch, -1)  # [B, N*C]
        num_candidates = candidates.sum(1).clamp(max=self.pre_nms_top_n).tolist()  # B ints

        out = []
        for b in range(batch):
            flat = torch.nonzero(candidates[b]).squeeze(1)  # [M], (anchor, label) flat ids, ascending
            top_scores, top = ranked[b, flat].topk(num_candidates[b], sorted=False)  # [k]
            chosen = flat[top]  # [k]
            locations = chosen // num_classes
            labels = chosen % num_classes + 1  # 1-based labels
            boxes = self.box_coder.decode(deltas[b, locations], anchors[locations])  # [k, 4]
            boxes = clip_boxes(boxes, image_sizes[b])
            keep = remove_small_boxes(boxes, self.min_size)
            out.append(_Candidates(boxes[keep], top_scores[keep].sqrt(), labels[keep]))
        return out

    def _select_over_levels(self, cand: _Candidates) -> _Candidates:
        """NMS over all levels, then the ``detections_per_img`` cut (kept in input order)."""
        if self.nms_thresh > 0:
            cand = cand.select(multiclass_nms(cand.boxes, cand.scores, cand.labels, self.nms_thresh))
        n = cand.scores.shape[0]
        if n > self.detections_per_img > 0:
            # The official cut: the (n - k + 1)-th smallest score, keeping every score >= it.
            threshold = torch.kthvalue(cand.scores.float(), n - self.detections_per_img + 1).values
            cand = cand.select(torch.nonzero(cand.scores >= threshold).squeeze(1))
        return cand


def merge_chunks(
    per_chunk: Sequence[Detections], chunks: Sequence[TokenizedPrompt], nms_thresh: float, top_k: int
) -> Detections:
    """One image's detections of each chunk of a long prompt -> one :class:`Detections`
    with global 1-based labels (chunk ``c``'s labels shifted by the phrases before it),
    sorted by score, at most ``top_k`` (``0``: all). A phrase that several chunks contain
    gets per-class NMS (``nms_thresh``) across them; each chunk ran NMS on its own classes."""
    if len(per_chunk) == 1:
        det = per_chunk[0]
        return det[:top_k] if 0 < top_k < len(det) else det
    offsets = [0]
    for tokens in chunks[:-1]:
        offsets.append(offsets[-1] + len(tokens.phrases))
    boxes = torch.cat([d.boxes for d in per_chunk])
    scores = torch.cat([d.scores for d in per_chunk])
    labels = torch.cat([d.labels + off for d, off in zip(per_chunk, offsets)])
    phrases = [p for d in per_chunk for p in d.phrases]
    masks = None if per_chunk[0].masks is None else torch.cat([d.masks for d in per_chunk])
    keep = torch.arange(len(phrases))
    in_several = {p for p, n in Counter(p for t in chunks for p in set(t.phrases)).items() if n > 1}
    if {p for p, n in Counter(phrases).items() if n > 1} & in_several:
        names = {name: i for i, name in enumerate(dict.fromkeys(phrases))}
        phrase_ids = torch.tensor([names[p] for p in phrases], dtype=torch.int64)
        keep = multiclass_nms(boxes, scores, phrase_ids, nms_thresh)
    order = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    if top_k > 0:
        order = order[:top_k]
    return Detections(
        boxes[order], scores[order], labels[order], [phrases[i] for i in order.tolist()],
        per_chunk[0].image_size, None if masks is None else masks[order],
    )  # fmt: skip


def class_agnostic_nms(det: Detections, nms_thresh: float) -> Detections:
    """One label per box: NMS over all labels at once (the official per-label NMS with
    every label the same), so a box found for two phrases keeps its best-scored one.
    Returned sorted by score."""
    if len(det) < 2:
        return det
    keep = multiclass_nms(det.boxes, det.scores, torch.zeros_like(det.labels), nms_thresh)
    return det[keep[torch.sort(det.scores[keep], descending=True, stable=True).indices]]
