"""VQA fine-tuning data for the training loop: the answer vocabulary and the datasets.

``glip train`` with ``model.heads.vqa.enabled`` and ``data.format`` ``vqa`` / ``gqa``:
when the config lists no answers, :func:`with_answer_vocabulary` builds them from the
training questions (answers given at least ``model.heads.vqa.min_answer_count`` times)
before the model is built; the config, saved with the model, carries them, so a loaded
model answers without the data.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from glip.config import GLIPConfig
from glip.data.transforms import build_train_transform
from glip.data.vqa import VqaDataset, load_vqa_records
from glip.text.vqa import build_answer_vocabulary

__all__ = ["VQA_FORMATS", "build_vqa_dataset", "with_answer_vocabulary"]

logger = logging.getLogger(__name__)

VQA_FORMATS = ("vqa", "gqa")


def with_answer_vocabulary(cfg: GLIPConfig) -> GLIPConfig:
    """``cfg`` itself, or a copy whose ``model.heads.vqa.answers`` is built from the training
    questions when the VQA head is on and its vocabulary empty: ``data.train_json``, or in a
    multi-task run those of every VQA / GQA source of ``data.sources``."""
    h = cfg.model.heads.vqa
    if not h.enabled or h.answers:
        return cfg
    d = cfg.data
    files = [(s.train_json, s.format) for s in d.sources if s.format in VQA_FORMATS and s.train_json]
    if not d.sources and d.format in VQA_FORMATS and d.train_json:
        files = [(d.train_json, d.format)]
    if not files:
        raise ValueError(
            "model.heads.vqa.answers is empty and cannot be built: set data.format to vqa or gqa and "
            "data.train_json to the training questions, or add a vqa/gqa source to data.sources "
            "(or list the answers in the config)"
        )
    records = [r for path, fmt in files for r in load_vqa_records(path, fmt)]
    answers = build_answer_vocabulary([r.multiple_choice_answer for r in records], h.min_answer_count)
    if not answers:
        names = ", ".join(path for path, _ in files)
        raise ValueError(
            f"no answer of {names} is given {h.min_answer_count} times or more: lower model.heads.vqa.min_answer_count"
        )
    logger.info("answer vocabulary: %d answers given at least %d times", len(answers), h.min_answer_count)
    out = copy.deepcopy(cfg)
    out.model.heads.vqa.answers = answers
    return out


def build_vqa_dataset(cfg: GLIPConfig, tokenizer: Any, train: bool = True) -> VqaDataset:
    """The VQA questions of ``cfg.data`` (train or val) for the model's answer vocabulary.
    Never flipped (left/right answers); validation uses the test resize."""
    d = cfg.data
    ann, images = (d.train_json, d.train_images) if train else (d.val_json, d.val_images)
    if not ann or not images:
        which = "train" if train else "val"
        raise ValueError(f"data.{which}_json and data.{which}_images must name a VQA json and its image folder")
    answers = cfg.model.heads.vqa.answers
    if not cfg.model.heads.vqa.enabled or not answers:
        raise ValueError(f"data.format {d.format!r} trains the VQA head: set model.heads.vqa.enabled=true")
    records = [r for r in load_vqa_records(ann, d.format) if r.answers]  # a test split has none
    if not records:
        raise ValueError(f"{ann} has no answered question (data.format {d.format!r})")
    return VqaDataset(
        records,
        images,
        tokenizer,
        build_train_transform(cfg.input, flip_prob=0.0, train=train),
        answers,
        max_query_len=cfg.model.text.max_query_len,
        seed=cfg.solver.seed,
    )
