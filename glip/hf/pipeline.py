"""transformers' ``zero-shot-object-detection`` pipeline, extended to glip models.

The stock pipeline runs one forward per label (OWL-ViT style), which would change GLIP's
results: GLIP fuses the whole prompt with the image, so every label of a call must be in
one prompt. This subclass is registered for the task in place of the stock class: for a
glip model it runs the model's :class:`glip.Predictor` (``glip.predict``'s path: one prompt
with all labels, chunked only past the text encoder's limits) and formats its detections
as the stock pipeline does; for any other model it is the stock pipeline, unchanged.
"""

from __future__ import annotations

from typing import Any

from transformers.image_utils import load_image
from transformers.pipelines.zero_shot_object_detection import ZeroShotObjectDetectionPipeline

from glip.hf.modeling import GLIPForZeroShotObjectDetection
from glip.text import PromptError

__all__ = ["GLIPZeroShotObjectDetectionPipeline"]


def _labels(candidate_labels: Any) -> list[str]:
    """The stock pipeline's label forms (``"cat,dog"`` or a list) -> a non-empty list."""
    labels = candidate_labels.split(",") if isinstance(candidate_labels, str) else candidate_labels
    labels = [str(label).strip() for label in (labels or [])]
    if not labels or not all(labels):
        raise PromptError(f"candidate_labels must name at least one label, and no empty one (got {candidate_labels!r})")
    return labels


class GLIPZeroShotObjectDetectionPipeline(ZeroShotObjectDetectionPipeline):
    """The stock zero-shot-object-detection pipeline, with glip models run as ``glip.predict``.

    For a glip model each image is one forward pass with all its labels; results are
    ``[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]`` sorted by score, boxes in
    original-image pixels truncated to int as the stock pipeline does, and equal to
    ``glip.predict(image, labels, threshold=threshold)``'s detections.
    """

    def _is_glip(self) -> bool:
        return isinstance(self.model, GLIPForZeroShotObjectDetection)

    def __call__(self, image: Any, candidate_labels: Any = None, **kwargs: Any) -> Any:
        if self._is_glip() and isinstance(image, (list, tuple)) and not any(isinstance(i, dict) for i in image):
            # A list of images (paths, URLs or PIL images): one input each, as the stock
            # pipeline does for a list of PIL images, and for paths too.
            if (
                isinstance(candidate_labels, (list, tuple))
                and candidate_labels
                and all(isinstance(labels, (list, tuple)) for labels in candidate_labels)
            ):
                if len(candidate_labels) != len(image):
                    raise ValueError(f"got {len(image)} images but {len(candidate_labels)} candidate label lists")
                per_image = list(candidate_labels)
            else:
                per_image = [candidate_labels] * len(image)
            inputs = [{"image": i, "candidate_labels": labels} for i, labels in zip(image, per_image)]
            return list(super(ZeroShotObjectDetectionPipeline, self).__call__(inputs, **kwargs))
        return super().__call__(image, candidate_labels, **kwargs)

    def check_model_type(self, supported_models: Any) -> None:
        if not self._is_glip():
            super().check_model_type(supported_models)

    def preprocess(self, inputs: dict[str, Any], timeout: float | None = None) -> Any:
        if not self._is_glip():
            yield from super().preprocess(inputs, timeout=timeout)
            return
        labels = _labels(inputs.get("candidate_labels"))
        image = load_image(inputs["image"], timeout=timeout)
        yield {"is_last": True, "image": image, "candidate_labels": labels}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        if not self._is_glip():
            return super()._forward(model_inputs)
        # Threshold 0 here, the user's in postprocess: Detections.above is a plain filter.
        detections = self.model.predictor().predict(
            model_inputs["image"], model_inputs["candidate_labels"], threshold=0.0
        )
        return {"is_last": model_inputs["is_last"], "detections": detections}

    def postprocess(self, model_outputs: Any, threshold: float = 0.1, top_k: int | None = None) -> list[dict[str, Any]]:
        if not self._is_glip():
            return super().postprocess(model_outputs, threshold=threshold, top_k=top_k)
        results = []
        for output in model_outputs:
            det = output["detections"].above(threshold)
            for box, score, phrase in zip(det.boxes, det.scores.tolist(), det.phrases):
                results.append({"score": score, "label": phrase, "box": self._get_bounding_box(box)})
        results.sort(key=lambda r: r["score"], reverse=True)
        return results[:top_k] if top_k else results
