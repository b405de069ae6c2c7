"""VQA data: VQAv2 and GQA readers, the divert-boxes rule and the training dataset.

Every reader returns :class:`VqaRecord` s (one per question). The dataset turns a record
into a :class:`GroundingSample` whose prompt is ``question [MASK]``: the answer boxes
ground the ``[MASK]`` token (the official ``PseudoData.divert_boxes`` rule, so the
grounding head learns to point at the boxes behind an answer), the boxes of question
phrases keep their spans, and ``targets.answer_scores`` holds the soft scores
``min(1, annotators / 3)`` over the model's answer vocabulary.

Files:

- VQAv2: an annotations json (``annotations``: ``question_id``, ``image_id``,
  ``question_type``, ``answer_type``, ``multiple_choice_answer``, ``answers`` [{``answer``,
  ``answer_confidence``, ``answer_id``}]) and its questions json (``questions``:
  ``question_id``, ``image_id``, ``question``), found by the official names
  (``v2_mscoco_<split>_annotations.json`` -> ``v2_OpenEnded_mscoco_<split>_questions.json``)
  or passed. Images: ``COCO_<data_subtype>_<image_id:012d>.jpg``.
- One combined file in the VQAv2 layout (what ``glip data synthetic`` writes as
  ``vqa_train.json``/``vqa_val.json``): ``questions`` and ``annotations`` as above in one
  json, plus ``images`` (COCO records: ``id``, ``file_name``, ``height``, ``width``) and
  per annotation optional ``answer_boxes``: the answer's boxes, COCO ``[x, y, w, h]``.
- GQA: a questions json (``{question_id: {imageId, question, answer, types, annotations}}``)
  and optionally the scene graphs json for the boxes of ``annotations`` (object ids).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glip.data.annotations import clean_boxes, read_image, token_positive_map
from glip.data.grounding_sample import GroundingSample
from glip.data.od_to_grounding import SampleRNG
from glip.data.seeded import SeededDataset
from glip.data.transforms import TrainTransform
from glip.structures.targets import GroundingTargets
from glip.text.vqa import MASK_TOKEN, answer_soft_scores, tokenize_question

__all__ = ["VqaDataset", "VqaRecord", "divert_boxes", "load_vqa_records", "read_gqa", "read_vqa"]

Span = tuple[int, int]


@dataclass
class VqaRecord:
    """One question about one image.

    Attributes:
        question_id, image_id: the json ids.
        file_name: the image's path relative to the image folder.
        question: the question text.
        answers: the annotators' answers (10 in VQAv2; a GQA answer repeated 10 times, so
            that the VQA accuracy is its exact match); empty for a test set.
        multiple_choice_answer: the most common answer (VQAv2), the training prompt's answer.
        question_type, answer_type: VQAv2 types (GQA: semantic and structural types).
        answer_boxes: the answer's boxes, COCO ``[x, y, w, h]`` in the stored image's pixels.
        question_boxes: ``((start, end), [x, y, w, h])``: boxes of question phrases (GQA),
            by character span in ``question``.
    """

    question_id: Any
    image_id: Any
    file_name: str
    question: str
    answers: list[str] = field(default_factory=list)
    multiple_choice_answer: str = ""
    question_type: str = ""
    answer_type: str = ""
    answer_boxes: list[list[float]] = field(default_factory=list)
    question_boxes: list[tuple[Span, list[float]]] = field(default_factory=list)

    def to_annotation(self) -> dict[str, Any]:
        """The record as a VQAv2 annotation (what :func:`glip.evaluation.vqa.vqa_accuracy` reads)."""
        return {
            "question_id": self.question_id,
            "image_id": self.image_id,
            "question_type": self.question_type,
            "answer_type": self.answer_type,
            "answers": list(self.answers),
        }


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid json: {e}") from None


_OFFICIAL_ANNOTATIONS = re.compile(r"^(v2_)?mscoco_(\w+)_annotations\.json$")


def _questions_file(annotations: Path) -> Path:
    match = _OFFICIAL_ANNOTATIONS.match(annotations.name)
    if match is None:
        raise ValueError(
            f"{annotations} has no 'questions': pass its questions json (VQAv2 names it "
            "v2_OpenEnded_mscoco_<split>_questions.json) or use a combined file"
        )
    return annotations.with_name(f"{match.group(1) or ''}OpenEnded_mscoco_{match.group(2)}_questions.json")


def read_vqa(path: str | Path, questions: str | Path | None = None) -> list[VqaRecord]:
    """The questions of a VQAv2 annotations json (with its questions json) or of a
    combined file (see the module docstring), in question order.

    A questions json alone (a test split) gives records without answers.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not ("questions" in data or "annotations" in data):
        raise ValueError(f"{path} is not a VQAv2 json (no 'questions' nor 'annotations')")
    qdata = data if "questions" in data else _load_json(Path(questions) if questions else _questions_file(path))
    anns = {a["question_id"]: a for a in data.get("annotations", [])}
    subtype = str(qdata.get("data_subtype", data.get("data_subtype", "")))
    files = {img["id"]: str(img["file_name"]) for img in data.get("images", [])}
    records = []
    for q in qdata["questions"]:
        image_id = q["image_id"]
        ann = anns.get(q["question_id"], {})
        answers = [str(a["answer"]) for a in ann.get("answers", [])]
        records.append(
            VqaRecord(
                question_id=q["question_id"],
                image_id=image_id,
                file_name=files.get(image_id, f"COCO_{subtype}_{int(image_id):012d}.jpg"),
                question=str(q["question"]),
                answers=answers,
                multiple_choice_answer=str(ann.get("multiple_choice_answer", answers[0] if answers else "")),
                question_type=str(ann.get("question_type", "")),
                answer_type=str(ann.get("answer_type", "")),
                answer_boxes=[[float(v) for v in b] for b in ann.get("answer_boxes", [])],
            )
        )
    return records


def _word_spans(text: str) -> list[Span]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def read_gqa(path: str | Path, scene_graphs: str | Path | None = None) -> list[VqaRecord]:
    """The questions of a GQA questions json (e.g. ``val_balanced_questions.json``).

    With ``scene_graphs`` (``{image_id: {objects: {id: {x, y, w, h}}}}``), the objects of
    ``annotations["answer"]`` become the answer boxes and those of
    ``annotations["question"]`` (keys ``"i"`` or ``"i:j"``: word indices of the question)
    question boxes over those words. Images: ``<imageId>.jpg``. Question type: the
    semantic type; answer type: the structural type.
    """
    data = _load_json(Path(path))
    graphs = _load_json(Path(scene_graphs)) if scene_graphs else {}
    records = []
    for qid, q in data.items():
        image_id = str(q["imageId"])
        objects = graphs.get(image_id, {}).get("objects", {})
        anns = q.get("annotations", {}) or {}

        def box(obj: str, objects: Mapping[str, Any] = objects) -> list[float] | None:
            o = objects.get(str(obj))
            return None if o is None else [float(o["x"]), float(o["y"]), float(o["w"]), float(o["h"])]

        answer_boxes = [b for b in (box(o) for o in (anns.get("answer") or {}).values()) if b is not None]
        words = _word_spans(str(q["question"]))
        question_boxes = []
        for key, obj in (anns.get("question") or {}).items():
            first, _, last = str(key).partition(":")
            start, end = int(first), int(last) if last else int(first) + 1
            b = box(obj)
            if b is not None and 0 <= start < end <= len(words):
                question_boxes.append(((words[start][0], words[end - 1][1]), b))
        types = q.get("types", {}) or {}
        answer = str(q.get("answer", ""))
        records.append(
            VqaRecord(
                question_id=qid,
                image_id=image_id,
                file_name=f"{image_id}.jpg",
                question=str(q["question"]),
                answers=[answer] * 10 if answer else [],
                multiple_choice_answer=answer,
                question_type=str(types.get("semantic", "")),
                answer_type=str(types.get("structural", "")),
                answer_boxes=answer_boxes,
                question_boxes=question_boxes,
            )
        )
    return records


def load_vqa_records(path: str | Path, data_format: str = "vqa") -> list[VqaRecord]:
    """``data_format`` ``"vqa"`` (VQAv2 or combined), ``"gqa"`` (questions json only) or
    ``"auto"`` (VQAv2 when the json has ``questions`` or ``annotations``, else GQA)."""
    if data_format == "auto":
        data = _load_json(Path(path))
        vqa = isinstance(data, dict) and ("questions" in data or "annotations" in data)
        data_format = "vqa" if vqa else "gqa"
    if data_format == "vqa":
        return read_vqa(path)
    if data_format == "gqa":
        return read_gqa(path)
    raise ValueError(f"unknown VQA data format {data_format!r} (expected 'vqa' or 'gqa')")


def divert_boxes(
    question: str, answer: str, spans: Sequence[Sequence[Span]], mask_token: str = MASK_TOKEN
) -> tuple[str, list[list[Span]]]:
    """The official divert-boxes rule (``PseudoData.divert_boxes``).

    The grounded caption is ``question + " " + answer``; ``spans`` are each box's
    character spans in it. The caption becomes ``question + " " + mask_token``, and every
    span that overlaps the answer (inclusive bounds, as the official overlap test) is
    re-pointed to the mask token; the other spans (question phrases) are unchanged.

    Returns:
        ``(question [MASK], the boxes' spans)``.
    """
    answer_start = len(question) + 1
    answer_end = answer_start + len(answer)
    mask_start = answer_start
    mask_end = mask_start + len(mask_token)
    out = []
    for group in spans:
        moved = []
        for start, end in group:
            overlaps = not (start > answer_end or answer_start > end)
            moved.append((mask_start, mask_end) if overlaps else (int(start), int(end)))
        out.append(moved)
    return f"{question} {mask_token}", out


class VqaDataset(SeededDataset):
    """VQA records as training samples (see the module docstring).

    Args:
        records: the questions (:func:`read_vqa`, :func:`read_gqa`).
        image_dir: the folder the records' ``file_name`` are relative to.
        tokenizer: the model's fast BERT tokenizer (with a mask token).
        transform: resize / normalise. Its flip must be off: a mirrored image would
            contradict "left" / "right" answers (the builder sets ``flip_prob`` 0).
        answers: the model's answer vocabulary (normalised), A answers.
        max_query_len: the prompt width T.
        seed: base of the per-sample seeds.

    A sample's kind is ``"grounding"``; its greenlight row is -1 (never masked by the MLM
    head: the answer slot must stay a [MASK]).
    """

    def __init__(
        self,
        records: Sequence[VqaRecord],
        image_dir: str | Path,
        tokenizer: Any,
        transform: TrainTransform,
        answers: Sequence[str],
        max_query_len: int = 256,
        seed: int = 0,
    ) -> None:
        if transform.flip_prob > 0:
            raise ValueError("VQA data cannot be flipped (left/right answers): use flip_prob 0")
        if tokenizer.mask_token_id is None:
            raise ValueError("the VQA prompt needs a tokenizer with a mask token")
        self.records = list(records)
        super().__init__([r.image_id for r in self.records], seed)
        self.image_dir = Path(image_dir)
        self.tokenizer = tokenizer
        self.transform = transform
        self.answer_index = {a: i for i, a in enumerate(answers)}
        self.max_query_len = max_query_len

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        record = self.records[item]
        image = read_image(self.image_dir / record.file_name)
        height, width = int(image.shape[0]), int(image.shape[1])
        question = record.question.strip()
        answer = record.multiple_choice_answer or "answer"
        answer_span = (len(question) + 1, len(question) + 1 + len(answer))
        raw_boxes = [b for b in record.answer_boxes] + [b for _, b in record.question_boxes]
        raw_spans = [[answer_span]] * len(record.answer_boxes) + [[s] for s, _ in record.question_boxes]
        caption, spans = divert_boxes(question, answer, raw_spans)
        cleaned = clean_boxes([{"bbox": b} for b in raw_boxes], height, width)
        spans = [spans[i] for i in cleaned.keep]
        encoding = tokenize_question(self.tokenizer, question, self.max_query_len)
        pmap = token_positive_map(encoding, spans, self.max_query_len)  # [G, T]
        tensor, boxes, flipped = self.transform(image, cleaned.boxes, rng)
        targets = GroundingTargets(
            boxes,
            pmap,
            torch.ones(len(spans), dtype=torch.int64),
            answer_scores=answer_soft_scores(record.answers, self.answer_index),
        )
        return GroundingSample(
            image=tensor,
            targets=targets,
            caption=caption,
            input_ids=torch.tensor(encoding["input_ids"], dtype=torch.int64),
            tokens_positive=spans,
            image_id=record.image_id,
            original_size=(height, width),
            flipped=flipped,
            num_dropped_boxes=cleaned.num_dropped,
            kind="grounding",
            greenlight=torch.full((self.max_query_len,), -1, dtype=torch.int64),
        )
