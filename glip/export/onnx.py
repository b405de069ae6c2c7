"""ONNX export of a GLIP model: the network from a preprocessed image to its head outputs.

The graph holds the backbone, the FPN, the fused head and (when the prompt is an input) the
text encoder. The modulated deformable convolution runs its pure-PyTorch path, so the file
needs no custom operator and runs on any ONNX runtime. Anchors, decoding, thresholds and NMS
stay outside the graph: :meth:`glip.modeling.heads.grounding.postprocess.GroundingPostProcessor` (or any
re-implementation of it) turns the outputs into boxes.

Dimension letters: B images (1), H x W the padded input, A anchors over all levels
(``sum_l H_l * W_l``, levels concatenated in order, row-major), T prompt tokens.

Graph inputs and outputs:

* ``image``: ``float32[B, 3, H, W]``, normalised as :class:`glip.inference.processor.Preprocessing`
  does, padded to a multiple of 32. With ``dynamic=True`` H and W are free;
* ``input_ids``, ``attention_mask``: ``int64[B, T]`` (only with a prompt input; dynamic T);
* ``box_regression``: ``float32[B, A, 4]`` box deltas against the anchors (after the level scales);
* ``centerness``: ``float32[B, A]`` centerness logits;
* ``dot_product_logits``: ``float32[B, A, T]`` region-word alignment logits.

With a fixed prompt (the default) the text encoder runs once at export and its features
become constants of the graph; T is then the prompt's trimmed length (see
:func:`glip.text.tokenize.trim_padding`) and the phrase of each token is known from the
:class:`TokenizedPrompt` returned by :func:`export_onnx`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from glip.modeling.glip import GLIP
from glip.ops import use_backend
from glip.structures import HeadOutputs, TextFeatures
from glip.text import TokenizedPrompt
from glip.text.tokenize import trim_padding

__all__ = ["OnnxBackbone", "OnnxGLIP", "OnnxGroundingHead", "export_onnx", "export_split"]

# ONNX opset: 17 has LayerNormalization and every op the graph uses.
OPSET = 17


class OnnxGLIP(nn.Module):
    """The exported computation: ``image (, input_ids, attention_mask)`` -> head outputs.

    Args:
        model: an eval-mode :class:`GLIP`.
        tokens: a fixed prompt (its text features are computed now and stored as buffers),
            or None: the prompt is a graph input.
    """

    def __init__(self, model: GLIP, tokens: TokenizedPrompt | None = None) -> None:
        super().__init__()
        self.model = model
        self.fixed = tokens is not None
        if tokens is not None:
            with torch.no_grad():
                text = self._text(tokens.input_ids, tokens.attention_mask)
            self.register_buffer("hidden", text.hidden)
            self.register_buffer("embedded", text.embedded)
            self.register_buffer("mask", text.mask)
            self.register_buffer("aggregate", text.aggregate)

    def _text(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        text = self.model.text_encoder(input_ids, attention_mask)
        offset = self.model.prompt_offset
        if offset is not None and offset.matches(input_ids, attention_mask):
            text = offset(text)
        return text

    def forward(
        self, image: Tensor, input_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        features = self.model.backbone(image)
        if self.fixed:
            text = TextFeatures(hidden=self.hidden, embedded=self.embedded, mask=self.mask, aggregate=self.aggregate)
        else:
            text = self._text(input_ids, attention_mask)
        head = _grounding(self.model, features, text)
        box_regression = torch.cat([r.flatten(2).transpose(1, 2) for r in head.box_regression], 1)  # [B, A, 4]
        centerness = torch.cat([c.flatten(1) for c in head.centerness], 1)  # [B, A]
        logits = torch.cat(head.dot_product_logits, 1)  # [B, A, T]
        return box_regression, centerness, logits


def _grounding(model: GLIP, features: list[Tensor], text: TextFeatures) -> HeadOutputs:
    """The trunk and grounding head: the graphs' common end."""
    return model.grounding(model.trunk(features, text), {})


class OnnxBackbone(nn.Module):
    """The first of the split graphs (:func:`export_split`): ``image`` -> L FPN maps."""

    def __init__(self, model: GLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.backbone(image))


class OnnxGroundingHead(nn.Module):
    """The second split graph: L FPN maps and text features -> the grounding head's outputs.

    ``forward(*features, hidden, embedded, mask)``: L ``Tensor[B, C, H_l, W_l]``, ``[B, T, D]``,
    ``[B, T, D]``, int64 ``[B, T]`` -> per level ``box_regression_l`` ``[B, 4, H_l, W_l]``, then
    ``centerness_l`` ``[B, 1, H_l, W_l]``, then ``dot_product_logits_l`` ``[B, H_l * W_l, T]``
    (the fields of :class:`glip.structures.HeadOutputs`).
    """

    def __init__(self, model: GLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        *features, hidden, embedded, mask = inputs
        aggregate = hidden[:, 0]  # read by no part of the trunk or grounding head
        text = TextFeatures(hidden=hidden, embedded=embedded, mask=mask, aggregate=aggregate)
        head = _grounding(self.model, list(features), text)
        return (*head.box_regression, *head.centerness, *head.dot_product_logits)


def export_split(model: GLIP, folder: str | Path, image_size: tuple[int, int] = (256, 384)) -> None:
    """Writes ``backbone.onnx`` and ``head.onnx`` (:class:`OnnxBackbone`,
    :class:`OnnxGroundingHead`) to ``folder``: the graphs ONNX Runtime runs as a
    :class:`glip.modeling.prompt_batch.GroundingNetwork` (:mod:`glip.export.runtime`).

    Batch, image size and prompt width are dynamic. The text encoder stays outside (its
    features are inputs, so a class list is encoded once); so do anchors, decoding and NMS.
    The example traced is one ``image_size`` image (a batch of 1, so that no per-image loop
    is unrolled) and an 8-token prompt.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    image = torch.zeros(1, 3, *image_size)
    levels = [f"feature_{i}" for i in range(len(model.anchor_generator.strides))]
    outputs = [f"{name}_{i}" for name in _HEAD_FIELDS for i in range(len(levels))]
    tokens = trim_padding(model.tokenize("object"))
    with torch.no_grad(), use_backend("torch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # see export_onnx
        features = tuple(model.backbone(image))
        text = model.text_encoder(tokens.input_ids, tokens.attention_mask)
        axes = {"image": {0: "batch", 2: "height", 3: "width"}}
        axes.update({name: {0: "batch", 2: f"height_{i}", 3: f"width_{i}"} for i, name in enumerate(levels)})
        _export(OnnxBackbone(model), (image,), folder / "backbone.onnx", ["image"], levels, axes)
        axes = {name: {0: "batch", 2: f"height_{i}", 3: f"width_{i}"} for i, name in enumerate(levels)}
        axes.update(hidden={0: "batch", 1: "tokens"}, embedded={0: "batch", 1: "tokens"})
        axes.update(mask={0: "batch", 1: "tokens"})
        for i in range(len(levels)):
            axes[f"box_regression_{i}"] = {0: "batch", 2: f"height_{i}", 3: f"width_{i}"}
            axes[f"centerness_{i}"] = {0: "batch", 2: f"height_{i}", 3: f"width_{i}"}
            axes[f"dot_product_logits_{i}"] = {0: "batch", 1: f"anchors_{i}", 2: "tokens"}
        args = (*features, text.hidden, text.embedded, text.mask)
        names = [*levels, "hidden", "embedded", "mask"]
        _export(OnnxGroundingHead(model), args, folder / "head.onnx", names, outputs, axes)


# The grounding head's per-level outputs, in the order OnnxGroundingHead returns them.
_HEAD_FIELDS = ("box_regression", "centerness", "dot_product_logits")


def _export(
    module: nn.Module, args: tuple[Tensor, ...], out: Path, inputs: list[str], outputs: list[str], axes: dict
) -> None:
    torch.onnx.export(
        module.eval(),
        args,
        str(out),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )


def export_onnx(
    model: GLIP,
    out: str | Path,
    prompt: str | None = None,
    *,
    prompt_input: bool = False,
    dynamic: bool = False,
    image_size: tuple[int, int] = (800, 1216),
) -> TokenizedPrompt | None:
    """Writes ``model`` to ``out`` as ONNX (module docstring for the graph's contract).

    Args:
        model: the model (moved to CPU, eval mode).
        out: the ``.onnx`` file to write.
        prompt: the prompt to fix in the graph (required unless ``prompt_input``).
        prompt_input: the token ids and mask are graph inputs instead (any prompt; the
            graph then also holds the text encoder).
        dynamic: free image height and width (and T with a prompt input); else the
            graph is specialised to ``image_size``.
        image_size: ``(H, W)`` of the example input traced, multiples of 32.

    Returns:
        The fixed prompt's :class:`TokenizedPrompt` (token columns -> phrases), or None.

    Raises:
        ValueError: no prompt and no prompt input, or an image size not a multiple of 32.
    """
    if prompt is None and not prompt_input:
        raise ValueError("give a prompt to fix in the graph, or make the prompt an input")
    stride = model.preprocessing.size_divisibility or 1
    if image_size[0] % stride or image_size[1] % stride:
        raise ValueError(f"image size {image_size} is not a multiple of {stride}")
    model = model.to("cpu").eval()
    tokens = trim_padding(model.tokenize(prompt)) if prompt is not None else None
    wrapper = OnnxGLIP(model, None if prompt_input else tokens).eval()
    image = torch.zeros(1, 3, *image_size)
    names, args = ["image"], [image]
    axes: dict[str, dict[int, str]] = {"image": {2: "height", 3: "width"}, "box_regression": {1: "anchors"}}
    axes.update(centerness={1: "anchors"}, dot_product_logits={1: "anchors"})
    if prompt_input:
        example = tokens if tokens is not None else trim_padding(model.tokenize("object"))
        names += ["input_ids", "attention_mask"]
        args += [example.input_ids, example.attention_mask]
        axes.update(input_ids={1: "tokens"}, attention_mask={1: "tokens"})
        axes["dot_product_logits"] = {1: "anchors", 2: "tokens"}
    with torch.no_grad(), use_backend("torch"), warnings.catch_warnings():
        # The tracer warns about every Python-side shape check it freezes; the dynamic-size
        # test (tests/export) is what shows the graph stays correct at other sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(args),
            str(out),
            input_names=names,
            output_names=["box_regression", "centerness", "dot_product_logits"],
            dynamic_axes=axes if dynamic else None,
            opset_version=OPSET,
            dynamo=False,
        )
    return tokens
