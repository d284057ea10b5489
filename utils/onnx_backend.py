"""ONNX: export a DetectionModel to an .onnx file, and run such a file through ONNX Runtime like the PyTorch model.

The exported graph takes `images` (N, 3, H, W) float32 in 0..1 and returns `output0` (N, boxes, 5 + nc), the decoded
predictions before NMS: what DetectionModel(x)[0] returns in eval mode. The file's metadata carries the rest that
val.py and detect.py need: class names, stride, the export size, and the PyTorch model's params and GFLOPs (an
exported graph no longer knows them; int8 files keep the fp32 model's figures).
"""

from __future__ import annotations

import inspect
import json
import warnings
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.yolo import Detect
from utils.errors import UserError
from utils.files import atomic_write

OPSET = 17
INPUT, OUTPUT = "images", "output0"


def import_ort():
    """onnxruntime, or a one-line UserError saying how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX Runtime is not installed: pip install onnx onnxruntime") from None
    return onnxruntime


class _Predictions(nn.Module):
    """The model with Detect returning only the decoded predictions (no per-level raw maps)."""

    def __init__(self, model: nn.Module, dynamic: bool):
        super().__init__()
        self.model = deepcopy(model).float().eval()
        for m in self.model.modules():
            if isinstance(m, Detect):
                m.export, m.dynamic = True, dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def save_onnx(proto, path: str | Path) -> None:
    """Write an ONNX ModelProto atomically (a reader never sees half a file)."""
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def set_metadata(proto, meta: dict) -> None:
    """Replace the file's metadata_props with `meta` (values JSON-encoded, so lists and dicts come back intact)."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)


def read_metadata(path: str | Path) -> dict:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def export_onnx(model: nn.Module, path: str | Path, imgsz: tuple[int, int], dynamic: bool = False,
                opset: int = OPSET, metadata: dict | None = None) -> Path:
    """Export `model` (eval mode; fuse it first for a smaller graph) to `path`; checked by onnx.checker.

    dynamic: batch, height and width are free (the Detect grids are rebuilt from the input shape); else the graph is
    fixed at batch 1 and `imgsz` (h, w). Uses the TorchScript-based exporter: no onnxscript needed.
    """
    import onnx

    wrapped, x = _Predictions(model, dynamic), torch.zeros(1, 3, *imgsz)
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 1: "boxes"}} if dynamic else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.export.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
            torch.onnx.export(wrapped, x, str(tmp), opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes=axes, do_constant_folding=True, **kwargs)
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    onnx.checker.check_model(proto)
    set_metadata(proto, metadata or {})
    save_onnx(proto, path)
    return path


class ExportedRuntime:
    """What every exported model offers val.py, detect.py and the benchmarks: called like DetectionModel in eval mode,
    model(images) -> (predictions, None), with names, stride, params, GFLOPs and precision from the export's metadata.
    A subclass sets path, meta, dynamic and imgsz (the fixed (h, w) of a static graph, or None for a --dynamic one) and
    defines run(x) on a numpy batch."""

    path: Path
    dynamic: bool
    imgsz: tuple[int, int] | None

    def _read_meta(self, meta: dict) -> None:
        self.meta = meta
        self.names = {int(k): str(v) for k, v in meta["names"].items()}
        self.stride = torch.tensor([float(meta["stride"])])
        self.params, self.gflops = int(meta.get("params", 0)), float(meta.get("GFLOPs", 0.0))
        self.precision = meta.get("precision", "fp32")
        self.device = torch.device("cpu")

    def eval(self) -> "ExportedRuntime":
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, im: torch.Tensor) -> tuple[torch.Tensor, None]:
        if not self.dynamic and (tuple(im.shape[2:]) != self.imgsz or im.shape[0] != 1):
            raise UserError(f"{self.path.name} was exported for 1x3x{self.imgsz[0]}x{self.imgsz[1]} input, got "
                            f"{'x'.join(map(str, im.shape))}; export with --dynamic for other shapes")
        y = self.run(np.ascontiguousarray(im.detach().float().cpu().numpy()))
        return torch.from_numpy(y).to(im.device), None

    def runner(self, imgsz: int):
        """One batch-1 inference on a fixed random image (for utils.latency.measure)."""
        h, w = self.imgsz or (imgsz, imgsz)
        x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
        return lambda: self.run(x)


class OnnxModel(ExportedRuntime):
    """An .onnx file written by export.py, run by ONNX Runtime on the CPU (see ExportedRuntime)."""

    def __init__(self, path: str | Path, threads: int = 0):
        ort = import_ort()
        path = Path(path)
        if not path.is_file():
            raise UserError(f"weights not found: {path}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per physical core)
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types for unreadable files
            raise UserError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:120]})") from None
        meta = {k: json.loads(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
        if "names" not in meta or "stride" not in meta:
            raise UserError(f"{path}: no YOLOv5 metadata (names, stride); export it with export.py")
        self.path = path
        self._read_meta(meta)
        shape = self.session.get_inputs()[0].shape
        self.dynamic = not all(isinstance(d, int) for d in shape)
        self.imgsz = None if self.dynamic else (shape[2], shape[3])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: x})[0]


def is_onnx(weights: str | Path) -> bool:
    return str(weights).lower().endswith(".onnx")
