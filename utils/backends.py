"""Exported weights behind one interface: an .onnx file (ONNX Runtime) or an OpenVINO IR folder, each called like
DetectionModel in eval mode (model(images) -> (predictions, None)) with names, stride, imgsz, params and GFLOPs.
val.py, detect.py and the benchmarks load every non-.pt weights through here."""

from __future__ import annotations

from pathlib import Path

from utils.onnx_backend import ExportedRuntime as ExportedModel
from utils.onnx_backend import OnnxModel, is_onnx
from utils.openvino_backend import OpenVinoModel, is_openvino

__all__ = ["ExportedModel", "is_exported", "load_exported"]


def is_exported(weights: str | Path) -> bool:
    return is_onnx(weights) or is_openvino(weights)


def load_exported(weights: str | Path, threads: int = 0) -> ExportedModel:
    """The runtime for an export.py output: ONNX Runtime for .onnx, OpenVINO (true fp32 for fp32 folders) for IR."""
    return OnnxModel(weights, threads) if is_onnx(weights) else OpenVinoModel(weights, threads)
