"""The CLIP teacher (RegionCLIP-style pseudo-labels): class-agnostic regions scored by CLIP
against a caption's noun phrases.

CLIP is a transformers ``CLIPModel`` or an open_clip model (:meth:`ClipScorer.load`).
Regions come from the GLIP detector (:class:`GlipProposals`: every box of the caption's
phrases above a low threshold, then class-agnostic NMS) or from a box file
(:class:`BoxFileProposals`). Each region is cropped from the image, resized to CLIP's
input size and embedded; each concept (``template.format(phrase)``) is embedded by CLIP's
text tower. A region's concept scores are the softmax over the concept pool of CLIP's
scaled cosine similarities (RegionCLIP's region-concept matching). The pool is the
caption's phrases plus optional background concepts (e.g. the most frequent phrases of
the whole caption file): a region is labelled with the caption phrase that scores best
in the pool, when that probability is above the threshold; a region that a background
concept wins gets no label. Without background concepts a single-phrase caption labels
every region, so give some (``--clip-background``).

Each kept box also carries its ``concept_scores``: CLIP's logits (``logit_scale x cosine``)
against each of the caption's phrases, in phrase order (the background concepts left
out), for RegionCLIP's distillation loss (``model.heads.grounding.distill_weight``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from glip.ops.nms import nms
from glip.text import Prompt
from glip.tools.teachers import Chunker, GlipTeacher, PseudoBox

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "OPEN_CLIP_PREFIX",
    "BoxFileProposals",
    "ClipScorer",
    "ClipTeacher",
    "GlipProposals",
    "frequent_phrases",
]

# OpenAI CLIP's input normalisation (its preprocess transform), used when the model folder
# has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The prompt template of CLIP's zero-shot evaluation ("a photo of a {}.").
DEFAULT_TEMPLATE = "a photo of {}."
# --clip-model prefix naming an open_clip model (open_clip:ViT-B-32, open_clip:hf-hub:ORG/REPO).
OPEN_CLIP_PREFIX = "open_clip:"

# image [H, W, 3] uint8, its prompts, its json id -> Tensor[R, 4] xyxy inclusive pixels
Proposer = Callable[[np.ndarray, Sequence[Prompt], Any], Tensor]


def _features(out: Any) -> Tensor:
    # transformers 4 returns the projected features; 5 a model output holding them as pooler_output.
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipScorer:
    """A CLIP model's two towers: L2-normalised embeddings of image crops and of texts.

    Build one with :meth:`load` (a transformers or an open_clip model) or from any pair of
    towers.

    Args:
        encode_image: normalised pixels ``Tensor[R, 3, S, S]`` (on ``device``) -> ``Tensor[R, D]``.
        encode_text: ``C`` texts -> ``Tensor[C, D]`` (tokenising them itself).
        logit_scale: CLIP's temperature, exponentiated (100 for OpenAI's CLIP).
        image_size: the square input side ``S``.
        mean, std: input normalisation of RGB in [0, 1].
        device: where the towers run.
    """

    def __init__(
        self,
        encode_image: Callable[[Tensor], Tensor],
        encode_text: Callable[[list[str]], Tensor],
        logit_scale: float,
        image_size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        device: str | torch.device = "cpu",
    ) -> None:
        self.encode_image = encode_image
        self.encode_text = encode_text
        self.logit_scale = float(logit_scale)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def load(spec: str | Path, pretrained: str | None = None, device: str | torch.device = "cpu") -> ClipScorer:
        """``spec``: ``open_clip:NAME`` (:meth:`from_open_clip`, with ``pretrained``), a folder
        holding ``open_clip_config.json`` (open_clip's local format), or else a transformers
        CLIP folder or cached hub name (:meth:`from_pretrained`)."""
        text = str(spec)
        if text.startswith(OPEN_CLIP_PREFIX):
            return ClipScorer.from_open_clip(text[len(OPEN_CLIP_PREFIX) :], pretrained, device)
        if (Path(text) / "open_clip_config.json").is_file():
            return ClipScorer.from_open_clip(f"local-dir:{text}", pretrained, device)
        if pretrained:
            raise ValueError("--clip-pretrained applies to open_clip models (--clip-model open_clip:NAME)")
        return ClipScorer.from_pretrained(text, device)

    @staticmethod
    def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
        """A transformers CLIP folder (``config.json``, weights, tokenizer files; a local
        folder or a Hugging Face name already in the cache)."""
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError:
            raise ValueError("the CLIP teacher needs transformers: pip install transformers") from None
        try:
            model = CLIPModel.from_pretrained(str(folder)).to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load a CLIP model from {folder}: {str(e).splitlines()[0]}") from None
        mean, std = CLIP_MEAN, CLIP_STD
        pre = Path(folder) / "preprocessor_config.json"
        if pre.is_file():
            spec = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = spec.get("image_mean", mean), spec.get("image_std", std)

        def encode_text(texts: list[str]) -> Tensor:
            enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            return _features(model.get_text_features(**enc))

        def encode_image(pixels: Tensor) -> Tensor:
            return _features(model.get_image_features(pixel_values=pixels))

        scale = float(model.logit_scale.detach().exp())
        return ClipScorer(encode_image, encode_text, scale, model.config.vision_config.image_size, mean, std, device)

    @staticmethod
    def from_open_clip(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> ClipScorer:
        """An open_clip model: ``name`` is a built-in architecture (``ViT-B-32``; its weights
        from ``pretrained``, a tag such as ``laion2b_s34b_b79k`` already in the cache or a
        checkpoint file), ``hf-hub:ORG/REPO`` (cached) or ``local-dir:FOLDER``
        (``open_clip_config.json`` and a weights file). Weights are required: a CLIP at
        random initialisation labels nothing. Input size and normalisation are the model's
        own (its preprocess configuration)."""
        try:
            import open_clip
        except ImportError:
            raise ValueError("open_clip models need open-clip-torch: pip install open-clip-torch") from None
        schema = name.split(":", 1)[0] if name.startswith(("hf-hub:", "local-dir:")) else None
        if schema is None and not pretrained:
            raise ValueError(f"open_clip:{name} needs --clip-pretrained (a tag such as laion2b_s34b_b79k, or a "
                             "checkpoint file): a CLIP at random initialisation labels nothing")  # fmt: skip
        try:
            model = open_clip.create_model(name, pretrained=pretrained if schema is None else None,
                                           device=device, require_pretrained=True)  # fmt: skip
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as e:  # open_clip raises RuntimeError, ValueError, OSError, hub errors alike
            raise ValueError(f"cannot load the open_clip model {name}: {str(e).splitlines()[0]}") from None
        model.eval()
        pre = getattr(model.visual, "preprocess_cfg", {})
        size = pre.get("size", model.visual.image_size)
        side = int(size[0] if isinstance(size, (tuple, list)) else size)

        def encode_text(texts: list[str]) -> Tensor:
            return model.encode_text(tokenizer(texts).to(device))

        scale = float(model.logit_scale.detach().exp())
        mean, std = pre.get("mean", CLIP_MEAN), pre.get("std", CLIP_STD)
        return ClipScorer(model.encode_image, encode_text, scale, side, mean, std, device)

    @torch.no_grad()
    def embed_crops(self, crops: Sequence[np.ndarray]) -> Tensor:
        """``R`` uint8 RGB crops -> ``Tensor[R, D]`` unit vectors (each crop resized to
        ``image_size`` squared, bicubic, whole region kept)."""
        side = self.image_size
        arrays = [np.asarray(Image.fromarray(c).resize((side, side), Image.BICUBIC)) for c in crops]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0  # [R, 3, S, S]
        pixels = (pixels - self.mean) / self.std
        feats = self.encode_image(pixels.to(self.device))  # [R, D]
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """``C`` texts -> ``Tensor[C, D]`` unit vectors."""
        feats = self.encode_text(list(texts))  # [C, D]
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()


def crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
    """The pixels of an inclusive-corner box (rounded outwards, clipped); None when empty."""
    h, w = image.shape[:2]
    x1, y1 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
    x2, y2 = min(int(math.ceil(box[2])), w - 1), min(int(math.ceil(box[3])), h - 1)
    if x2 < x1 or y2 < y1:
        return None
    return np.ascontiguousarray(image[y1 : y2 + 1, x1 : x2 + 1])


class GlipProposals:
    """Class-agnostic regions from a GLIP model: all boxes of the prompts' phrases scoring
    above ``threshold`` (the teacher's threshold), then NMS at ``nms_iou`` over all of them."""

    def __init__(self, teacher: GlipTeacher, nms_iou: float = 0.5) -> None:
        self.teacher = teacher
        self.nms_iou = nms_iou

    def __call__(self, image: np.ndarray, prompts: Sequence[Prompt], image_id: Any = None) -> Tensor:
        dets = [d.above(self.teacher.threshold) for d in self.teacher.detections(image, prompts)]
        if not dets:
            return torch.zeros((0, 4))
        boxes = torch.cat([d.boxes for d in dets]).float()  # [R, 4]
        scores = torch.cat([d.scores for d in dets]).float()  # [R]
        keep = nms(boxes, scores, self.nms_iou) if self.nms_iou > 0 else torch.argsort(scores, descending=True)
        return boxes[keep]


class BoxFileProposals:
    """Regions given in a json: a list of ``{"image_id", "bbox": [x, y, w, h]}`` (COCO
    results) or a COCO json whose ``annotations`` hold them; ``w = x2 - x1 + 1``."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"box file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a json file ({e})") from None
        records = data.get("annotations") if isinstance(data, Mapping) else data
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a list of boxes or a COCO json with 'annotations'")
        self.boxes: dict[Any, list[list[float]]] = {}
        for r in records:
            if not isinstance(r, Mapping) or "image_id" not in r or len(r.get("bbox", ())) != 4:
                raise ValueError(f"{path}: every box needs an 'image_id' and a 4-number 'bbox' (got {r!r:.80})")
            x, y, w, h = (float(v) for v in r["bbox"])
            self.boxes.setdefault(r["image_id"], []).append([x, y, x + w - 1, y + h - 1])

    def __call__(self, image: np.ndarray, prompts: Sequence[Prompt], image_id: Any = None) -> Tensor:
        return torch.tensor(self.boxes.get(image_id, []), dtype=torch.float32).reshape(-1, 4)


class ClipTeacher:
    """Labels regions with the caption phrase CLIP matches best (see the module docstring).

    Args:
        scorer: embeds crops and texts (:class:`ClipScorer` or any object with
            ``embed_crops``, ``embed_texts`` and ``logit_scale``).
        proposals: ``(image, prompts, image_id) -> Tensor[R, 4]`` xyxy regions.
        threshold: a region's best phrase needs a probability above this.
        background: concepts in the pool besides the caption's phrases.
        template: how a phrase is written for CLIP's text tower.
    """

    def __init__(
        self,
        scorer: Any,
        proposals: Proposer,
        threshold: float = 0.5,
        background: Sequence[str] = (),
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        if "{}" not in template:
            raise ValueError(f"the CLIP template must hold '{{}}' for the phrase, got {template!r}")
        self.scorer = scorer
        self.proposals = proposals
        self.threshold = threshold
        self.background = list(dict.fromkeys(background))
        self.template = template

    def label(self, image: np.ndarray, prompts: Sequence[Prompt], image_id: Any = None) -> list[list[PseudoBox]]:
        if not prompts:
            return []
        regions = self.proposals(image, prompts, image_id)
        kept = [(box, c) for box in regions.tolist() if (c := crop(image, box)) is not None]
        if not kept:
            return [[] for _ in prompts]
        region_emb = self.scorer.embed_crops([c for _, c in kept])  # [R, D]
        out = []
        for prompt in prompts:
            own = {p.lower() for p in prompt.phrases}
            concepts = list(prompt.phrases) + [b for b in self.background if b.lower() not in own]
            text_emb = self.scorer.embed_texts([self.template.format(c) for c in concepts])  # [C, D]
            logits = self.scorer.logit_scale * region_emb @ text_emb.T  # [R, C]
            best, which = logits.softmax(dim=-1).max(dim=-1)  # [R], [R]
            own_logits = logits[:, : len(prompt.phrases)].tolist()  # [R][P]
            boxes = []
            for (box, _), p, j, row in zip(kept, best.tolist(), which.tolist(), own_logits):
                if j < len(prompt.phrases) and p > self.threshold:
                    boxes.append(PseudoBox(tuple(box), p, j, tuple(row)))  # type: ignore[arg-type]
            out.append(sorted(boxes, key=lambda b: -b.score))
        return out


def frequent_phrases(captions: Iterable[str], chunker: Chunker, top: int) -> list[str]:
    """The ``top`` most frequent noun phrases (lower-cased) of ``captions``, ties in first-seen
    order: a background concept pool for :class:`ClipTeacher`."""
    if top <= 0:
        return []
    counts = Counter(p.lower() for caption in captions for p, _ in chunker(caption))
    return [p for p, _ in counts.most_common(top)]
