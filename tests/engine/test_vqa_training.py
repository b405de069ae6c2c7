"""VQA fine-tuning through ``glip.engine.train`` (configs/vqa/synthetic.yaml on the
synthetic questions): the vocabulary built from the training answers, ``loss_vqa``
logged, the answers saved with the model and a reloaded model answering."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from glip.config import load_config
from tests.engine.conftest import REPO, tiny_overrides

VQA_YAML = REPO / "configs" / "vqa" / "synthetic.yaml"


def vqa_config(shapes, text_dir, **extra):
    values = {
        "data.format": "vqa",
        "data.train_json": str(shapes.root / "vqa_train.json"),
        "model.heads.vqa.min_answer_count": 3,
        "solver.max_iter": 3,
        "solver.max_neg_per_batch": 0.1,  # the default: a question without boxes must still train
        **extra,
    }
    return load_config(VQA_YAML, tiny_overrides(shapes, text_dir, **values))


def test_answer_vocabulary_is_built_from_the_training_answers(shapes, text_dir) -> None:
    from glip.engine.vqa import with_answer_vocabulary

    cfg = vqa_config(shapes, text_dir)
    built = with_answer_vocabulary(cfg)
    assert cfg.model.heads.vqa.answers == []  # the input config is left alone
    data = json.loads((shapes.root / "vqa_train.json").read_text())
    counts = Counter(a["multiple_choice_answer"] for a in data["annotations"])
    assert set(built.model.heads.vqa.answers) == {a for a, n in counts.items() if n >= 3}


def test_vqa_training_saves_a_model_that_answers(shapes, text_dir, tmp_path) -> None:
    from glip.engine import train
    from glip.engine.checkpoint import load_state
    from glip.hub.loading import load_model
    from glip.vqa_api import answer

    cfg = vqa_config(shapes, text_dir)
    result = train(cfg, tmp_path, cpu=True, progress_bar=False)
    assert result.progress.step == 3 and result.progress.skipped == 0
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_vqa" in row and "loss_dot_product_token" in row for row in logged if "loss" in row)
    model = load_model(tmp_path / "model")
    answers = model.heads["vqa"].answers
    assert len(answers) >= 5 and "yes" in answers
    saved = load_state(result.checkpoint)["model"]
    key = "heads.vqa.classifier.classifier.weight"
    assert torch.equal(saved[key], model.state_dict()[key])  # the trained answer head, reloaded
    image = shapes.image_dir / "train_00000.png"
    reply = answer(image, "What color is the circle?", model=model)
    assert reply.answer in answers and 0.0 <= reply.score <= 1.0
    assert reply.boxes.shape[1] == 4 and len(reply.phrases) == len(reply.box_scores)


def test_a_split_without_answers_is_refused_for_training(shapes, text_dir, tmp_path) -> None:
    from glip.engine.vqa import build_vqa_dataset

    data = json.loads((shapes.root / "vqa_train.json").read_text())
    del data["annotations"]  # a test split: questions only
    (tmp_path / "questions.json").write_text(json.dumps(data))
    cfg = vqa_config(shapes, text_dir, **{"data.train_json": str(tmp_path / "questions.json")})
    cfg.model.heads.vqa.answers = ["yes", "no"]
    with pytest.raises(ValueError, match="no answered question"):
        build_vqa_dataset(cfg, tokenizer=None)
