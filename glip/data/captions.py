"""Caption data: COCO-captions jsons, the captioning dataset, and synthetic captions.

COCO-captions layout (``captions_train2017.json``): ``images`` (``id``, ``file_name``,
``width``, ``height``) and ``annotations`` (``id``, ``image_id``, ``caption``), several
captions per image. :class:`CaptionDataset` serves them as training samples of the data
kind ``"captioning"`` (causal captioning, :func:`glip.engine.head_needs.causal_losses`),
with no boxes. :func:`write_synthetic_captions` writes such jsons for the shapes of
:func:`glip.data.synthetic.generate_synthetic`: one sentence per image naming its largest
shapes with their colours and a spatial relation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glip.data.annotations import read_image
from glip.data.grounding_sample import GroundingSample
from glip.data.od_to_grounding import SampleRNG
from glip.data.seeded import SeededDataset
from glip.data.transforms import TrainTransform
from glip.structures.targets import GroundingTargets

__all__ = [
    "CAPTIONING",
    "CaptionDataset",
    "CocoCaptions",
    "describe_objects",
    "ground_objects",
    "load_coco_captions",
    "write_synthetic_captions",
]

# The data kind of causal-captioning samples (GroundingSample.kind / GroundingBatch.kinds).
CAPTIONING = "captioning"


@dataclass(frozen=True)
class CocoCaptions:
    """A COCO-captions json.

    Attributes:
        images: image records by id (``file_name`` relative to the image folder).
        captions: each image's captions, in json order, by image id (images without one
            are left out).
        image_ids: the ids with at least one caption, in ``images`` order.
    """

    images: Mapping[Any, Mapping[str, Any]]
    captions: Mapping[Any, list[str]]
    image_ids: list[Any]


def load_coco_captions(path: str | Path) -> CocoCaptions:
    """Reads a COCO-captions json; a missing file or a wrong layout is one clear ``ValueError``
    (``FileNotFoundError`` for a missing file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a json file ({e})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise ValueError(f"{path} is not a COCO-captions json (expected 'images' and 'annotations' lists)")
    images: dict[Any, Mapping[str, Any]] = {}
    for record in data["images"]:
        if not isinstance(record, dict) or "id" not in record or "file_name" not in record:
            raise ValueError(f"{path}: every image needs an 'id' and a 'file_name' (got {record!r:.80})")
        images[record["id"]] = record
    captions: dict[Any, list[str]] = {}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ValueError(f"{path}: every annotation needs an 'image_id' and a 'caption' string (got {ann!r:.80})")
        if ann["image_id"] not in images:
            raise ValueError(f"{path}: caption of unknown image id {ann['image_id']!r}")
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    ids = [i for i in images if captions.get(i)]
    return CocoCaptions(images=images, captions=captions, image_ids=ids)


class CaptionDataset(SeededDataset):
    """Images and captions for causal captioning (samples of kind ``"captioning"``, no boxes).

    Sample ``i`` is image ``image_ids[i]`` with one of its captions: the
    ``(epoch + i) % n``-th of its ``n`` (all captions are seen over ``n`` epochs).
    Captions are lower-cased by the uncased tokenizer, truncated to ``max_query_len``
    tokens. The transform must not flip (a flip would swap "left" and "right").

    Args:
        ann_file: COCO-captions json.
        image_dir: folder the images' ``file_name`` are relative to.
        tokenizer: a fast BERT tokenizer.
        transform: resize/normalise, with ``flip_prob`` 0.
        max_query_len: T.
        seed: the run seed (per-sample resize draws).
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        tokenizer: Any,
        transform: TrainTransform,
        max_query_len: int,
        seed: int = 0,
    ) -> None:
        if getattr(transform, "flip_prob", 0.0) > 0:
            raise ValueError("captioning data must not be flipped (left/right would swap): use flip_prob 0")
        self.data = load_coco_captions(ann_file)
        super().__init__(self.data.image_ids, seed)
        self.image_dir = Path(image_dir)
        self.tokenizer = tokenizer
        self.transform = transform
        self.max_query_len = max_query_len

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        """Sample ``item`` (the transform draws from ``rng``)."""
        image_id = self.ids[item]
        record = self.data.images[image_id]
        texts = self.data.captions[image_id]
        caption = texts[(self.epoch + item) % len(texts)]
        image = read_image(self.image_dir / record["file_name"])
        encoding = self.tokenizer(caption, max_length=self.max_query_len, truncation=True)
        tensor, _, flipped = self.transform(image, torch.zeros(0, 4), rng)
        targets = GroundingTargets(
            torch.zeros(0, 4), torch.zeros(0, self.max_query_len, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
        )
        return GroundingSample(
            image=tensor,
            targets=targets,
            caption=caption,
            input_ids=torch.tensor(encoding["input_ids"], dtype=torch.int64),
            tokens_positive=[],
            image_id=image_id,
            original_size=(int(image.shape[0]), int(image.shape[1])),
            flipped=flipped,
            kind=CAPTIONING,  # type: ignore[arg-type]
        )


def _relation(a: Sequence[float], b: Sequence[float]) -> str:
    """Where box ``a`` (x, y, w, h) is relative to box ``b``: along the axis of the larger
    offset between their centres (ties: horizontal)."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def ground_objects(
    objects: Sequence[tuple[str, Sequence[float]]], rng: np.random.Generator
) -> tuple[str, list[tuple[int, tuple[int, int]]]]:
    """One sentence about an image's shapes (:func:`describe_objects`) and where it names
    them: ``(index into objects, (start, end))`` per named shape, the character span of its
    noun phrase with the article (``"a red circle"``, as noun-phrase chunkers cut it), in
    the order the sentence names them."""
    if not objects:
        return "an empty picture", []
    order = sorted(range(len(objects)), key=lambda i: -objects[i][1][2] * objects[i][1][3])
    named: list[int] = [order[0]]
    if len(order) > 1:
        named = [order[0], order[1]]
        if rng.integers(2):
            named.reverse()
    words = [f"a {objects[named[0]][0]}"]
    if len(named) > 1:
        words += [_relation(objects[named[0]][1], objects[named[1]][1]), f"a {objects[named[1]][0]}"]
    if len(order) > 2:
        named.append(order[2])
        words += ["and", f"a {objects[order[2]][0]}"]
    sentence = " ".join(words)
    spans, start = [], 0
    for index in named:
        phrase = f"a {objects[index][0]}"
        start = sentence.index(phrase, start)
        spans.append((index, (start, start + len(phrase))))
        start += len(phrase)
    return sentence, spans


def describe_objects(objects: Sequence[tuple[str, Sequence[float]]], rng: np.random.Generator) -> str:
    """One sentence about an image's shapes: ``"a red circle to the left of a blue square"``.

    Args:
        objects: ``(name, [x, y, w, h])`` per shape (name ``"<colour> <shape>"``).
        rng: picks which of the two largest shapes is the subject.

    The two largest shapes (by box area; ties in json order) are related by the larger
    offset of their centres; a third largest is added as ``"and a ..."``; one shape is named
    alone. No punctuation, lower case: the sentence decodes back exactly from BERT tokens.
    """
    return ground_objects(objects, rng)[0]


def write_synthetic_captions(root: str | Path, detection_jsons: Mapping[str, Path], seed: int = 0) -> list[Path]:
    """Writes ``root/captions_<split>.json`` (COCO-captions layout, one caption per image) and
    ``root/grounding_<split>.json`` (the same captions grounded, MDETR layout: each image
    record holds its ``caption``; one annotation per named shape, its box, mask and category
    with the ``tokens_positive`` span of its noun phrase, ``"a red circle"``) for each
    ``{split: detection json}`` of :func:`glip.data.synthetic.generate_synthetic`. Returns
    the captions files.

    The captions come from the boxes and names of the detection json
    (:func:`ground_objects`) and a generator seeded by ``(seed, split index)``: the same
    seed gives byte-identical files.
    """
    paths = []
    for k, (split, det_json) in enumerate(detection_jsons.items()):
        data = json.loads(Path(det_json).read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        by_image: dict[Any, list[dict[str, Any]]] = {im["id"]: [] for im in data["images"]}
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            by_image[ann["image_id"]].append(ann)
        rng = np.random.Generator(np.random.PCG64([seed, k]))
        images = [{key: im[key] for key in ("id", "file_name", "width", "height")} for im in data["images"]]
        annotations, grounded = [], []
        for i, im in enumerate(images):
            anns = by_image[im["id"]]
            caption, spans = ground_objects([(names[a["category_id"]], a["bbox"]) for a in anns], rng)
            annotations.append({"id": i + 1, "image_id": im["id"], "caption": caption})
            for index, span in spans:
                box = {key: anns[index][key] for key in ("bbox", "area", "category_id", "iscrowd", "segmentation")}
                grounded.append({**box, "id": len(grounded) + 1, "image_id": im["id"], "tokens_positive": [list(span)]})
        path = Path(root) / f"captions_{split}.json"
        text = json.dumps({"images": images, "annotations": annotations}, sort_keys=True, indent=1)
        path.write_text(text + "\n", encoding="utf-8")
        captioned = [{**im, "caption": a["caption"]} for im, a in zip(images, annotations)]
        text = json.dumps(
            {"images": captioned, "annotations": grounded, "categories": data["categories"]}, sort_keys=True, indent=1
        )
        (Path(root) / f"grounding_{split}.json").write_text(text + "\n", encoding="utf-8")
        paths.append(path)
    return paths
