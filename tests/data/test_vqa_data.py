"""VQA data: the VQAv2 and GQA readers, the divert-boxes rule, the synthetic questions and
the training samples (answer boxes on the [MASK] token, soft scores)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glip.data import TrainTransform, generate_synthetic
from glip.data.od_to_grounding import SampleRNG
from glip.data.vqa import VqaDataset, VqaRecord, divert_boxes, read_gqa, read_vqa


def test_divert_boxes_points_answer_spans_at_the_mask() -> None:
    question, answer = "What is left of the cat?", "a dog"
    caption = f"{question} {answer}"
    cat = (caption.index("cat"), caption.index("cat") + 3)
    dog = (caption.index("dog"), caption.index("dog") + 3)
    text, spans = divert_boxes(question, answer, [[cat], [dog], [cat, dog]])
    assert text == "What is left of the cat? [MASK]"
    mask = (text.index("[MASK]"), len(text))
    assert spans == [[cat], [mask], [cat, mask]]
    assert text[slice(*spans[0][0])] == "cat"


def test_read_vqa_two_official_files_and_a_combined_one(tmp_path: Path) -> None:
    questions = {
        "data_subtype": "val2014",
        "questions": [{"question_id": 7, "image_id": 42, "question": "How many?"}],
    }
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(["2"] * 9 + ["3"])]
    annotations = {
        "annotations": [
            {
                "question_id": 7, "image_id": 42, "question_type": "how many", "answer_type": "number",
                "multiple_choice_answer": "2", "answers": answers,
            }
        ]
    }  # fmt: skip
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    (record,) = read_vqa(tmp_path / "v2_mscoco_val2014_annotations.json")
    assert record.file_name == "COCO_val2014_000000000042.jpg"
    assert record.answers == ["2"] * 9 + ["3"] and record.multiple_choice_answer == "2"
    assert (record.question_type, record.answer_type, record.answer_boxes) == ("how many", "number", [])
    combined = {**questions, **annotations, "images": [{"id": 42, "file_name": "x.png"}]}
    combined["annotations"][0]["answer_boxes"] = [[1, 2, 3, 4]]
    (tmp_path / "vqa.json").write_text(json.dumps(combined))
    (record,) = read_vqa(tmp_path / "vqa.json")
    assert record.file_name == "x.png" and record.answer_boxes == [[1.0, 2.0, 3.0, 4.0]]
    (tmp_path / "other.json").write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match="questions json"):
        read_vqa(tmp_path / "other.json")


def test_read_gqa_with_scene_graph_boxes(tmp_path: Path) -> None:
    questions = {
        "q1": {
            "imageId": "n1", "question": "What is on the table?", "answer": "cup",
            "types": {"structural": "query", "semantic": "rel"},
            "annotations": {"answer": {"0": "o2"}, "question": {"4": "o1"}, "fullAnswer": {}},
        }
    }  # fmt: skip
    graphs = {"n1": {"objects": {"o1": {"x": 0, "y": 10, "w": 50, "h": 5}, "o2": {"x": 5, "y": 1, "w": 4, "h": 9}}}}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "sg.json").write_text(json.dumps(graphs))
    (record,) = read_gqa(tmp_path / "q.json", tmp_path / "sg.json")
    assert record.file_name == "n1.jpg" and record.answers == ["cup"] * 10
    assert (record.question_type, record.answer_type) == ("rel", "query")
    assert record.answer_boxes == [[5.0, 1.0, 4.0, 9.0]]
    ((span, box),) = record.question_boxes
    assert record.question[slice(*span)] == "table?" and box == [0.0, 10.0, 50.0, 5.0]
    assert read_gqa(tmp_path / "q.json")[0].answer_boxes == []  # no scene graph: no boxes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("vqa_shapes"), num_train=12, num_val=4, image_size=64, seed=5)


def test_synthetic_questions_match_the_drawn_shapes(shapes, tmp_path: Path) -> None:
    coco = json.loads(shapes.train_json.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    objects: dict[int, list[tuple[str, str, list[float]]]] = {}
    for a in coco["annotations"]:
        objects.setdefault(a["image_id"], []).append((*names[a["category_id"]].split(" "), a["bbox"]))
    data = json.loads((shapes.root / "vqa_train.json").read_text())
    assert len(data["questions"]) == len(data["annotations"]) > 2 * len(coco["images"])
    types = set()
    for q, ann in zip(data["questions"], data["annotations"]):
        assert q["question_id"] == ann["question_id"] and len(ann["answers"]) == 10
        objs, answer, text = objects[q["image_id"]], ann["multiple_choice_answer"], q["question"]
        types.add(ann["question_type"])
        if ann["question_type"] == "how many":
            shape = text.split(" ")[2][:-1]
            assert int(answer) == sum(s == shape for _, s, _ in objs) == len(ann["answer_boxes"])
        elif ann["question_type"] == "what color is the":
            shape = text.rstrip("?").split(" ")[-1]
            assert [(c, b) for c, s, b in objs if s == shape] == [(answer, ann["answer_boxes"][0])]
        elif ann["question_type"] == "is there a":
            color, shape = text.rstrip("?").split(" ")[-2:]
            assert (answer == "yes") == any((c, s) == (color, shape) for c, s, _ in objs)
    assert types == {"what color is the", "what shape is the", "how many", "is there a", "is the"}
    again = generate_synthetic(tmp_path, num_train=12, num_val=4, image_size=64, seed=5)
    assert (again.root / "vqa_train.json").read_bytes() == (shapes.root / "vqa_train.json").read_bytes()
    assert (again.root / "vqa_val.json").read_bytes() == (shapes.root / "vqa_val.json").read_bytes()


def test_sample_grounds_the_answer_boxes_on_the_mask_token(tmp_path: Path, tokenizer) -> None:
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    question = "What color is the cup on the table?"
    table = (question.index("table"), question.index("table") + 5)
    record = VqaRecord(
        question_id=1, image_id=1, file_name="a.png", question=question,
        answers=["red"] * 5 + ["blue"] * 2 + ["green"] * 3, multiple_choice_answer="red",
        answer_boxes=[[10, 5, 20, 10]], question_boxes=[(table, [0, 20, 60, 20])],
    )  # fmt: skip
    answers = ["blue", "red", "yes"]
    dataset = VqaDataset([record], tmp_path, tokenizer, TrainTransform([40], 60, flip_prob=0.0), answers, 32)
    sample = dataset.load(0, SampleRNG.from_seed(0))
    ids = sample.input_ids.tolist()
    assert sample.caption == "What color is the cup on the table? [MASK]"
    slot = ids.index(tokenizer.mask_token_id)
    assert slot == len(ids) - 2
    pmap = sample.targets.positive_map
    assert pmap[0].nonzero().flatten().tolist() == [slot]  # the answer box -> [MASK]
    assert tokenizer.decode([ids[t] for t in pmap[1].nonzero().flatten().tolist()]) == "table"
    assert sample.targets.boxes.tolist()[0] == [10.0, 5.0, 29.0, 14.0]  # xywh -> inclusive xyxy
    assert torch.allclose(sample.targets.answer_scores, torch.tensor([2 / 3, 1.0, 0.0]))
    assert (sample.greenlight == -1).all()  # never corrupted by the MLM head
    with pytest.raises(ValueError, match="flip"):
        VqaDataset([record], tmp_path, tokenizer, TrainTransform([40], 60, flip_prob=0.5), answers)
