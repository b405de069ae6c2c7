"""Overfitting one synthetic image: the right answer to each of its questions
(``scripts/overfit_vqa.py``, asked through the inference path ``answer_questions``)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_script


def _run(**kwargs) -> list[bool]:
    module = load_script("overfit_vqa")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return module.run(verbose=False, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_answer_head_overfits_one_synthetic_image() -> None:
    # Seed 0: a green square, a blue triangle and one more triangle; 5 questions of 20 answers.
    right = _run(steps=150, seed=0, eval_every=50)
    assert len(right) == 5 and all(right), right


@pytest.mark.slow  # the whole model trained: ~1-8 s per step on a loaded 2-core CPU (pytest -m slow)
def test_whole_model_overfits_one_synthetic_image() -> None:
    right = _run(steps=60, seed=0, eval_every=10, full=True)
    assert len(right) == 5 and all(right), right
