"""Model export (ONNX)."""

from glip.export.onnx import OnnxGLIP, export_onnx

__all__ = ["OnnxGLIP", "export_onnx"]
