"""Visual question answering for users: :func:`answer` and :func:`answer_questions`.

A re-export module kept for its import path: the code lives in :mod:`glip.inference.vqa`
(and :func:`answer` in :mod:`glip.inference.shortcuts`, on the shared predictor).
"""

from glip.inference.shortcuts import answer
from glip.inference.vqa import VQA, Answer, VQAUnavailableError, answer_questions, require_vqa

__all__ = ["VQA", "Answer", "VQAUnavailableError", "answer", "answer_questions", "require_vqa"]
