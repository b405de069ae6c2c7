"""The bundled demo-shapes model runs offline and finds shapes."""

from __future__ import annotations

import json

import torch

import glip
from glip.data import generate_synthetic
from glip.hub.zoo import is_cached
from glip.ops.boxes import box_iou


def test_demo_shapes_localises_objects(tmp_path):
    assert is_cached("demo-shapes"), "glip/assets/demo-shapes is part of the package"
    data = generate_synthetic(tmp_path, num_train=0, num_val=6, image_size=(128, 192), seed=123)
    record = json.loads(data.val_json.read_text())
    names = [c["name"] for c in sorted(record["categories"], key=lambda c: c["id"])]
    predictor = glip.Predictor("demo-shapes", device="cpu")
    for image in record["images"]:
        gt = torch.tensor(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in record["annotations"]
                if a["image_id"] == image["id"]
            ]
        )
        det = predictor.predict(str(data.image_dir / image["file_name"]), names, threshold=0.0)
        assert set(det.phrases) <= set(names)
        # The best-scoring box lies on one of the shapes (IoU > 0.5 with a ground-truth box).
        assert box_iou(det.boxes[:1], gt).max() > 0.5, image["file_name"]


def test_demo_shapes_grounds_colour_and_shape(tmp_path):
    """On one-shape images with all 16 names prompted, the top-scoring phrase is the shape's
    own name: both its colour word and its shape word are read (chance: 1 in 16; the model
    bundled before 2026-11-30 read the shape word only and was right on 31 %)."""
    data = generate_synthetic(tmp_path, num_train=0, num_val=32, image_size=(128, 192), seed=321, max_objects=1)
    record = json.loads(data.val_json.read_text())
    names = [c["name"] for c in sorted(record["categories"], key=lambda c: c["id"])]
    truth = {a["image_id"]: names[a["category_id"] - 1] for a in record["annotations"]}
    predictor = glip.Predictor("demo-shapes", device="cpu")
    hits = colour = total = 0
    spread = []
    for image in record["images"]:
        if image["id"] not in truth:
            continue
        det = predictor.predict(str(data.image_dir / image["file_name"]), names, threshold=0.0)
        total += 1
        hits += det.phrases[0] == truth[image["id"]]
        colour += det.phrases[0].split()[0] == truth[image["id"]].split()[0]
        top = det.boxes[0]
        same_box = det.scores[(det.boxes - top).abs().amax(dim=1) < 1.0]
        spread.append(float(same_box.max() - same_box.min()))
    assert total >= 24
    assert hits / total >= 0.75, f"top phrase right on {hits}/{total} images (chance 1/16)"
    assert colour / total >= 0.85, f"colour word right on {colour}/{total} images (chance 1/4)"
    # The phrases scored on the best box differ (they were equal to 1e-6 when the text collapsed).
    assert sum(spread) / len(spread) > 0.01


def test_demo_shapes_segments_the_shapes_it_finds(tmp_path):
    """The bundled model carries the mask head: the top detection's mask covers its shape."""
    import numpy as np

    from glip.data.masks import annotation_mask

    data = generate_synthetic(tmp_path, num_train=0, num_val=8, image_size=(128, 192), seed=456, max_objects=1)
    record = json.loads(data.val_json.read_text())
    names = [c["name"] for c in sorted(record["categories"], key=lambda c: c["id"])]
    predictor = glip.Predictor("demo-shapes", device="cpu", masks=True)
    ious = []
    for image in record["images"]:
        anns = [a for a in record["annotations"] if a["image_id"] == image["id"]]
        if not anns:
            continue
        det = predictor.predict(str(data.image_dir / image["file_name"]), names, threshold=0.0)
        assert det.masks is not None and det.masks.shape[1:] == (image["height"], image["width"])
        truth = annotation_mask(anns[0], image["height"], image["width"])
        pred = det.masks[0].numpy()
        ious.append(np.logical_and(pred, truth).sum() / max(np.logical_or(pred, truth).sum(), 1))
    assert len(ious) >= 6 and float(np.mean(ious)) > 0.6, ious


def test_demo_shapes_answers_questions(tmp_path):
    """The bundled model answers the synthetic questions (VQA accuracy, the official
    formula) well above what one answer per question type would score, on fresh images."""
    from glip.evaluation.vqa import vqa_accuracy
    from glip.vqa_api import answer_questions

    data = generate_synthetic(tmp_path, num_train=0, num_val=12, image_size=(128, 192), seed=654)
    record = json.loads((data.root / "vqa_val.json").read_text())
    questions = {q["question_id"]: q for q in record["questions"]}
    model = glip.load_model("demo-shapes", device="cpu")
    predictions = {}
    for image in json.loads(data.val_json.read_text())["images"]:
        asked = [q for q in questions.values() if q["image_id"] == image["id"]]
        answers = answer_questions(model, data.image_dir / image["file_name"], [q["question"] for q in asked])
        predictions.update({q["question_id"]: a.answer for q, a in zip(asked, answers)})
    annotations = record["annotations"]
    accuracy = vqa_accuracy(predictions, annotations).accuracy
    # The best constant answer per question type ("yes", "left", "1", ...) as the bar's floor.
    by_type: dict = {}
    for a in annotations:
        by_type.setdefault(a["question_type"], []).append(a["multiple_choice_answer"])
    constant = sum(max(v.count(x) for x in set(v)) for v in by_type.values()) / len(annotations)
    assert len(predictions) >= 40
    assert accuracy >= 0.6 and accuracy >= constant + 0.1, (accuracy, constant)  # the model: 0.70, 0.55


def test_demo_shapes_captions_name_the_shapes(tmp_path):
    """Captions of fresh images start with a shape of the image ("a <colour> <shape>"), and
    their noun phrases come with boxes."""
    data = generate_synthetic(tmp_path, num_train=0, num_val=8, image_size=(128, 192), seed=987)
    record = json.loads(data.val_json.read_text())
    names = {c["id"]: c["name"] for c in record["categories"]}
    model = glip.load_model("demo-shapes", device="cpu")
    right = 0
    for image in record["images"]:
        present = {names[a["category_id"]] for a in record["annotations"] if a["image_id"] == image["id"]}
        cap = glip.caption(str(data.image_dir / image["file_name"]), model=model)
        words = cap.text.split()
        assert words and words[0] == "a" and len(cap.phrases) == len(cap.boxes) >= 1, cap.text
        right += " ".join(words[1:3]) in present
    assert right >= 6, f"the first shape named is in the image on {right} of 8"


def test_demo_shapes_is_right_when_it_is_confident(tmp_path):
    """With all 16 names prompted, at most 10 % of the detections above 0.5 name another
    shape than the one under them, also when another phrase shares a word with it ("blue
    circle" on a blue diamond), and at least 40 % of the shapes get their own name above 0.5
    (so precision does not come from silence). On these 32 images: the bundled model 3 wrong
    of 48 and 45 of 93 shapes named (4.3 wrong of 155 per 100 fresh images, 2.8 %, on three
    fresh seeds), the one before it 2 of 38 and 36 of 93, and the model bundled before issue
    #25 (ecff2ab), which scored words, not phrases, 11 of 48 (23 %). A rate over 32 images,
    not a count over 16: at 3-6 % a 16-image set holds 0 to 2 mistakes by chance."""
    data = generate_synthetic(tmp_path, num_train=0, num_val=32, image_size=(128, 192), seed=2468)
    record = json.loads(data.val_json.read_text())
    names = [c["name"] for c in sorted(record["categories"], key=lambda c: c["id"])]
    predictor = glip.Predictor("demo-shapes", device="cpu")
    wrong, named, shapes, confident = [], 0, 0, 0
    for image in record["images"]:
        anns = [a for a in record["annotations"] if a["image_id"] == image["id"]]
        gt = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        det = predictor.predict(str(data.image_dir / image["file_name"]), names, threshold=0.5)
        shapes += len(anns)
        confident += len(det)
        found = set()
        for box, phrase in zip(det.boxes, det.phrases):
            iou = box_iou(box[None], gt)[0] if len(anns) else torch.zeros(0)
            best = int(iou.argmax()) if len(anns) else -1
            if best < 0 or iou[best] < 0.5 or names[anns[best]["category_id"] - 1] != phrase:
                wrong.append((image["file_name"], phrase))
            else:
                found.add(best)
        named += len(found)
    assert confident >= 30 and len(wrong) <= 0.10 * confident, (confident, wrong)
    assert named >= 0.4 * shapes, f"{named} of {shapes} shapes named rightly above 0.5"
