"""Inference: the processor (inputs -> tensors), the predictor (one path for every user
entry point) and the decoding of the network's outputs into user objects.

Data flow: :class:`Processor` (tokenizer, image preprocessing) -> the network
(:class:`glip.modeling.glip.GLIP`: tensors -> head outputs) -> the heads' post-processing
(:mod:`glip.inference.detection`, masks, answers, captions) -> :class:`Predictor`
(prompt resolution, chunking, batching, devices). ``GLIP.predict`` and the other convenience
methods of the network delegate here (registered below), so the network imports none of it.
"""

from glip.modeling.glip import register_inference as _register_inference

from . import detection as _detection
from .captioning import Caption, caption_image
from .predictor import ModelLike, Predictor, predict_image, resolve_model
from .processor import Preprocessing, Processor, preprocessing_for
from .prompts import EncodedPrompt, PromptLike, resolve_prompt
from .shortcuts import answer, caption, predict, shared_predictor
from .vqa import Answer, VQAUnavailableError, answer_questions, require_vqa

_register_inference(
    preprocessing=preprocessing_for,
    processor=Processor.of,
    predict=predict_image,
    detect=_detection.detect,
    detect_prompts=_detection.detect_prompts,
    detect_chunks=_detection.detect_chunks,
    encode_prompts=_detection.encode_prompts,
)

__all__ = [
    "Answer",
    "Caption",
    "EncodedPrompt",
    "ModelLike",
    "Predictor",
    "Preprocessing",
    "Processor",
    "PromptLike",
    "VQAUnavailableError",
    "answer",
    "answer_questions",
    "caption",
    "caption_image",
    "predict",
    "predict_image",
    "preprocessing_for",
    "require_vqa",
    "resolve_model",
    "resolve_prompt",
    "shared_predictor",
]
