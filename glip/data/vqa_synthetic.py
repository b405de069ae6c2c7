"""Questions about the synthetic shapes (``glip data synthetic``): ``vqa_train.json`` and
``vqa_val.json`` in the VQAv2 layout, one combined file per split (:mod:`glip.data.vqa`).

Per image, from its COCO annotations (``"<colour> <shape>"`` categories), up to five
questions, each answered identically by 10 "annotators", with the answer's boxes:

- colour: ``What color is the circle?`` (a shape drawn once) -> ``red``;
- shape: ``What shape is the red object?`` (a colour drawn once) -> ``circle``;
- count: ``How many squares are there?`` -> ``0`` .. ``5`` (the counted shapes' boxes);
- presence: ``Is there a blue star?`` -> ``yes`` (its boxes) / ``no`` (no box), even odds;
- position: ``Is the red circle on the left or on the right?`` -> ``left`` / ``right`` (an
  object drawn once whose centre is at least 10 % of the width away from the middle).

Question types follow VQAv2's (the first words): ``what color is the``, ``what shape is
the``, ``how many``, ``is there a``, ``is the``; answer types ``other``, ``number``,
``yes/no``. Deterministic: the same COCO files and seed give byte-identical json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VQA_TRAIN_NAME", "VQA_VAL_NAME", "synthetic_questions", "write_synthetic_vqa"]

VQA_TRAIN_NAME = "vqa_train.json"
VQA_VAL_NAME = "vqa_val.json"
ANNOTATORS = 10  # VQAv2 collects 10 answers per question
MIDDLE_MARGIN = 0.1  # position questions only for objects this far (fraction of the width) from the middle

Object = tuple[str, str, list[float]]  # colour, shape, [x, y, w, h]


def _question(image_id: int, k: int, text: str, answer: str, qtype: str, atype: str, boxes: list[list[float]]):
    answers = [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(ANNOTATORS)]
    qid = image_id * 10 + k
    question = {"question_id": qid, "image_id": image_id, "question": text}
    annotation = {
        "question_id": qid,
        "image_id": image_id,
        "question_type": qtype,
        "answer_type": atype,
        "multiple_choice_answer": answer,
        "answers": answers,
        "answer_boxes": [list(b) for b in boxes],
    }
    return question, annotation


def synthetic_questions(
    image: dict[str, Any],
    objects: Sequence[Object],
    colors: Sequence[str],
    shapes: Sequence[str],
    rng: np.random.Generator,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The ``(question, annotation)`` pairs of one image (see the module docstring)."""
    image_id, width = int(image["id"]), float(image["width"])
    shape_count = Counter(s for _, s, _ in objects)
    color_count = Counter(c for c, _, _ in objects)
    name_count = Counter((c, s) for c, s, _ in objects)
    out = []
    single_shapes = sorted(s for s, n in shape_count.items() if n == 1)
    if single_shapes:
        shape = single_shapes[int(rng.integers(len(single_shapes)))]
        color, _, box = next(o for o in objects if o[1] == shape)
        out.append((f"What color is the {shape}?", color, "what color is the", "other", [box]))
    single_colors = sorted(c for c, n in color_count.items() if n == 1)
    if single_colors:
        color = single_colors[int(rng.integers(len(single_colors)))]
        _, shape, box = next(o for o in objects if o[0] == color)
        out.append((f"What shape is the {color} object?", shape, "what shape is the", "other", [box]))
    present = sorted(shape_count)
    shape = present[int(rng.integers(len(present)))] if rng.random() < 0.7 else shapes[int(rng.integers(len(shapes)))]
    counted = [b for _, s, b in objects if s == shape]
    out.append((f"How many {shape}s are there?", str(len(counted)), "how many", "number", counted))
    if rng.random() < 0.5:
        color, shape = sorted(name_count)[int(rng.integers(len(name_count)))]
    else:
        color, shape = colors[int(rng.integers(len(colors)))], shapes[int(rng.integers(len(shapes)))]
    boxes = [b for c, s, b in objects if (c, s) == (color, shape)]
    out.append((f"Is there a {color} {shape}?", "yes" if boxes else "no", "is there a", "yes/no", boxes))
    sided = [
        o
        for o in objects
        if name_count[(o[0], o[1])] == 1 and abs(o[2][0] + o[2][2] / 2 - width / 2) >= MIDDLE_MARGIN * width
    ]
    if sided:
        color, shape, box = sided[int(rng.integers(len(sided)))]
        side = "left" if box[0] + box[2] / 2 < width / 2 else "right"
        out.append((f"Is the {color} {shape} on the left or on the right?", side, "is the", "other", [box]))
    return [_question(image_id, k, *q) for k, q in enumerate(out)]


def _split_questions(coco: dict[str, Any], split: str, colors: list[str], shapes: list[str], seed: int) -> dict:
    names = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
    by_image: dict[int, list[Object]] = {int(img["id"]): [] for img in coco["images"]}
    for ann in coco["annotations"]:
        color, shape = names[int(ann["category_id"])].split(" ")
        by_image[int(ann["image_id"])].append((color, shape, [float(v) for v in ann["bbox"]]))
    rng = np.random.Generator(np.random.PCG64([seed, 0 if split == "train" else 1]))
    questions, annotations = [], []
    for image in coco["images"]:
        objects = by_image[int(image["id"])]
        if not objects:
            continue
        for q, a in synthetic_questions(image, objects, colors, shapes, rng):
            questions.append(q)
            annotations.append(a)
    return {
        "info": {"description": "glip synthetic shapes VQA (VQAv2 layout, questions + annotations combined)"},
        "data_type": "synthetic",
        "data_subtype": split,
        "images": coco["images"],
        "questions": questions,
        "annotations": annotations,
    }


def write_synthetic_vqa(root: str | Path, train_json: Path, val_json: Path, seed: int = 0) -> tuple[Path, Path]:
    """Writes ``root/vqa_train.json`` and ``root/vqa_val.json`` from the two COCO jsons of
    :func:`glip.data.generate_synthetic` (same images; colours and shapes from the
    validation categories, which list all of them)."""
    val = json.loads(Path(val_json).read_text(encoding="utf-8"))
    train = json.loads(Path(train_json).read_text(encoding="utf-8"))
    names = [str(c["name"]) for c in val["categories"]]
    colors = sorted({n.split(" ")[0] for n in names}, key=[n.split(" ")[0] for n in names].index)
    shapes = sorted({n.split(" ")[1] for n in names}, key=[n.split(" ")[1] for n in names].index)
    paths = []
    for split, coco, name in (("train", train, VQA_TRAIN_NAME), ("val", val, VQA_VAL_NAME)):
        path = Path(root) / name
        data = _split_questions(coco, split, colors, shapes, seed)
        path.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]
