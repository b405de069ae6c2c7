"""ONNX Runtime as an inference backend: the exported network behind the usual detection path.

:class:`OnnxRuntimeNetwork` runs the two graphs of :func:`glip.export.onnx.export_split`
(backbone; trunk + grounding head) as a :class:`glip.modeling.prompt_batch.GroundingNetwork`.
Everything else stays the model's own code, the same path as the PyTorch backend: the
tokenizer and the text encoder (a class list is encoded once), prompt chunking, anchors,
decoding and NMS (:class:`glip.modeling.heads.grounding.postprocess.GroundingPostProcessor`).

The graphs are exported on first use into a cache folder named by a hash of the exported
weights and the model's architecture (``$GLIP_CACHE/onnx/<key>/``, see
:func:`glip.hub.zoo.cache_dir`), so later predictors of the same model start at once. Batch,
image size and prompt width are dynamic axes: one export serves every image and prompt.

``onnxruntime-int8`` adds ONNX Runtime's dynamic int8 quantisation
(``onnxruntime.quantization.quantize_dynamic``, weights int8, activations quantised per call)
of both graphs: opt-in, its effect on the results is stated in docs/performance.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from glip.export.onnx import OPSET, export_split
from glip.hub.zoo import cache_dir
from glip.modeling.glip import GLIP
from glip.structures import HeadOutputs, TextFeatures

__all__ = ["BACKENDS", "OnnxRuntimeNetwork", "network_for", "parse_backend"]

# Backend names of Predictor(backend=...) and `glip detect --backend`.
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def parse_backend(name: str | None) -> str:
    """A backend name (None: ``"torch"``), checked: ``ValueError`` names the choices."""
    backend = "torch" if name is None else str(name).lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return backend


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("the onnxruntime backend needs onnxruntime and onnx: pip install 'glip[export]'") from None
    return onnxruntime


def model_key(model: GLIP) -> str:
    """A hash of what the graphs hold: the backbone, trunk and grounding-head tensors, the
    model's structure, and the exporter's versions (torch, opset)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{torch.__version__}|{OPSET}|{model.backbone}|{model.trunk}|{model.grounding}".encode())
    for part in (model.backbone, model.trunk, model.grounding):
        for name, t in part.state_dict().items():
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _quantize(folder: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a warning per tensor whose shape is dynamic
    try:
        for name in ("backbone", "head"):
            target = folder / f"{name}.int8.onnx"
            if not target.is_file():
                tmp = folder / f"{name}.int8.tmp{os.getpid()}.onnx"
                quantize_dynamic(folder / f"{name}.onnx", tmp, weight_type=QuantType.QInt8)
                os.replace(tmp, target)
    finally:
        root.setLevel(level)


def network_for(
    model: GLIP, int8: bool = False, cache: str | Path | None = None, log: Callable[[str], None] | None = None
) -> OnnxRuntimeNetwork:
    """The :class:`OnnxRuntimeNetwork` of ``model`` (float32 weights), exporting the graphs
    into ``cache`` (default ``$GLIP_CACHE/onnx``) on first use. ``log`` is told when a long
    export starts."""
    _ort()
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("the onnxruntime backend exports float32 weights (leave weights_dtype at float32)")
    folder = Path(cache) if cache is not None else cache_dir() / "onnx"
    folder = folder / model_key(model)
    if not (folder / "head.onnx").is_file():
        if log is not None:
            log(f"exporting the model to ONNX (first use; cached in {folder})")
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        device = model.device
        try:
            export_split(model, tmp)  # moves the model to the CPU
            if not (folder / "head.onnx").is_file():  # else another process finished first
                shutil.rmtree(folder, ignore_errors=True)
                tmp.replace(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            model.to(device)
    if int8:
        if log is not None and not (folder / "head.int8.onnx").is_file():
            log(f"quantising the ONNX graphs to int8 (first use; cached in {folder})")
        _quantize(folder)
    suffix = ".int8.onnx" if int8 else ".onnx"
    return OnnxRuntimeNetwork(folder / f"backbone{suffix}", folder / f"head{suffix}", model.grounding.num_classes)


class OnnxRuntimeNetwork:
    """The backbone and the trunk + grounding head as ONNX Runtime sessions (CPU).

    Args:
        backbone, head: the two graph files of :func:`glip.export.onnx.export_split`.
        num_classes: the grounding head's ``num_classes`` (:class:`HeadOutputs`).
        threads: intra-op threads (default: ``torch.get_num_threads()``, as the PyTorch path).
    """

    def __init__(self, backbone: str | Path, head: str | Path, num_classes: int, threads: int | None = None) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        self.backbone = ort.InferenceSession(str(backbone), options, providers=providers)
        self.head = ort.InferenceSession(str(head), options, providers=providers)
        self.num_classes = num_classes
        self._head_inputs = {i.name for i in self.head.get_inputs()}  # unused inputs are pruned

    def features(self, images: Tensor) -> list[Tensor]:
        """Padded images ``Tensor[B, 3, H, W]`` -> L FPN maps ``Tensor[B, C, H_l, W_l]``."""
        outputs = self.backbone.run(None, {"image": images.detach().cpu().float().numpy()})
        return [torch.from_numpy(f) for f in outputs]

    def grounding(self, features: list[Tensor], text: TextFeatures) -> HeadOutputs:
        """FPN maps and ``[B, T, D]`` text -> :class:`HeadOutputs` (levels as lists)."""
        feeds = {f"feature_{i}": f.detach().cpu().float().numpy() for i, f in enumerate(features)}
        feeds.update(hidden=text.hidden, embedded=text.embedded, mask=text.mask)
        feeds = {k: v if not isinstance(v, Tensor) else v.detach().cpu().contiguous().numpy() for k, v in feeds.items()}
        outputs = [torch.from_numpy(o) for o in self.head.run(None, {k: feeds[k] for k in self._head_inputs})]
        n = len(features)
        return HeadOutputs(
            box_regression=outputs[:n],  # L x [B, 4, H_l, W_l]
            centerness=outputs[n : 2 * n],  # L x [B, 1, H_l, W_l]
            dot_product_logits=outputs[2 * n :],  # L x [B, H_l * W_l, T]
            num_classes=self.num_classes,
        )
