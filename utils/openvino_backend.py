"""OpenVINO: convert an export.py ONNX file to an OpenVINO IR folder (fp32, or int8 through NNCF post-training
quantization), and run such a folder like the PyTorch model.

The folder is named as upstream YOLOv5 names it, `<stem>_openvino_model/` (`<stem>_int8_openvino_model/` for int8),
and holds `<stem>.xml`, `<stem>.bin` and `metadata.yaml` (upstream's keys `stride` and `names`, plus the ONNX file's
other metadata: export size, params and GFLOPs of the PyTorch model, precision). The graph is the ONNX file's:
`images` (N, 3, H, W) float32 in 0..1 -> (N, boxes, 5 + nc) decoded predictions before NMS.

Precision at run time: OpenVINO's CPU plugin runs "fp32" models in bf16 on CPUs with AMX or AVX512-BF16 unless told
otherwise; `OpenVinoModel(..., precision="f32")` (the default here) asks for true fp32 so that figures named fp32 are.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.files import yaml_load
from utils.onnx_backend import ExportedRuntime

SUFFIX, INT8_SUFFIX = "_openvino_model", "_int8_openvino_model"
PRESETS = ("mixed", "performance")


def import_ov():
    """openvino, or a one-line UserError saying how to get it."""
    try:
        import openvino
    except ImportError:
        raise UserError("OpenVINO is not installed: pip install openvino nncf") from None
    return openvino


def ir_folder(onnx_path: str | Path, int8: bool = False) -> Path:
    """Where export.py writes the IR of `onnx_path`: <stem>_openvino_model/ beside it (int8: <stem>_int8_...)."""
    p = Path(onnx_path)
    return p.with_name(p.stem + (INT8_SUFFIX if int8 else SUFFIX))


def is_openvino(weights: str | Path) -> bool:
    """An IR folder (holding one .xml) or an .xml file."""
    p = Path(weights)
    return p.suffix.lower() == ".xml" or (p.is_dir() and any(p.glob("*.xml")))


def _xml(weights: str | Path) -> Path:
    p = Path(weights)
    if p.is_dir():
        xmls = sorted(p.glob("*.xml"))
        if len(xmls) != 1:
            raise UserError(f"{p}: an OpenVINO folder holds one .xml file, found {len(xmls)}")
        return xmls[0]
    if not p.is_file():
        raise UserError(f"weights not found: {p}")
    return p


def decode_ops(model) -> list[str]:
    """Friendly names of the ops that compute the output from the last convolutions (walking back from the output):
    the Detect decode, which int8 must leave in float (its output mixes pixels 0..640 with confidences 0..1). NNCF
    2026's own patterns leave it float too; naming it guards against that changing, and naming the output
    convolutions' bias adds also keeps those three small convolutions float (NNCF quantizes a conv with its bias)."""
    seen, names = set(), []
    stack = [model.get_results()[0].input_value(0).get_node()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen or node.get_type_name() in ("Convolution", "Parameter", "Constant"):
            continue
        seen.add(name)
        names.append(name)
        stack.extend(v.get_node() for v in node.input_values())
    return names


def _write_folder(ov_model, dst: Path, stem: str, meta: dict) -> Path:
    """Save the IR and metadata.yaml into a temporary folder, then move it to `dst` (a reader never sees half)."""
    import yaml

    ov = import_ov()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        ov.save_model(ov_model, str(tmp / f"{stem}.xml"), compress_to_fp16=False)
        (tmp / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def export_openvino(onnx_path: str | Path, meta: dict, dst: str | Path | None = None) -> Path:
    """Convert the fp32 ONNX file to an fp32 IR folder (default: ir_folder(onnx_path)); returns the folder."""
    ov = import_ov()
    onnx_path = Path(onnx_path)
    model = ov.convert_model(str(onnx_path))
    return _write_folder(model, Path(dst) if dst else ir_folder(onnx_path), onnx_path.stem,
                         {**meta, "precision": "fp32"})


def quantize_openvino(fp32_folder: str | Path, images: list[np.ndarray], dst: str | Path,
                      preset: str = "mixed") -> Path:
    """int8 IR folder from an fp32 one through NNCF post-training quantization calibrated on `images` ((1,3,h,w)
    float32 arrays); the Detect decode and output convolutions stay float. NNCF's `mixed` preset: symmetric
    weights, asymmetric activations (SiLU outputs are not symmetric around 0)."""
    ov = import_ov()
    try:
        import nncf
    except ImportError:
        raise UserError("NNCF is not installed: pip install nncf") from None
    if preset not in PRESETS:
        raise UserError(f"--ov-preset must be one of {', '.join(PRESETS)}, got {preset}")
    xml = _xml(fp32_folder)
    meta = read_metadata(fp32_folder)
    model = ov.Core().read_model(str(xml))
    scope = nncf.IgnoredScope(names=decode_ops(model), validate=False)
    nncf.set_log_level(logging.WARNING)  # its INFO lists every op it leaves in float
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = nncf.quantize(model, nncf.Dataset(images), preset=getattr(nncf.QuantizationPreset, preset.upper()),
                          subset_size=len(images), ignored_scope=scope)
    return _write_folder(q, Path(dst), xml.stem, {**meta, "precision": "int8", "calibration": f"nncf {preset}",
                                                  "calibration_images": len(images)})


def read_metadata(weights: str | Path) -> dict:
    f = _xml(weights).parent / "metadata.yaml"
    if not f.is_file():
        raise UserError(f"{weights}: no metadata.yaml beside the .xml; export it with export.py --include openvino")
    return yaml_load(f)


class OpenVinoModel(ExportedRuntime):
    """An IR folder written by export.py, compiled for the CPU (see utils.onnx_backend.ExportedRuntime).

    precision: "f32" (true fp32 even where the CPU has bf16 units), or "default" (the plugin's choice: bf16 on
    CPUs with AMX). threads: 0 = OpenVINO's default.
    """

    def __init__(self, path: str | Path, threads: int = 0, precision: str = "f32"):
        ov = import_ov()
        xml = _xml(path)
        meta = read_metadata(path)
        if "names" not in meta or "stride" not in meta:
            raise UserError(f"{path}: metadata.yaml has no names or stride; export it with export.py")
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = ov.Core().read_model(str(xml))
            self.compiled = ov.Core().compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError for unreadable files
            raise UserError(f"{path}: not a readable OpenVINO model ({str(e).splitlines()[0][:120]})") from None
        self.request = self.compiled.create_infer_request()
        self.path = Path(path)
        self._read_meta(meta)
        shape = model.inputs[0].get_partial_shape()
        self.dynamic = shape.is_dynamic
        self.imgsz = None if self.dynamic else (shape[2].get_length(), shape[3].get_length())

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[0].copy()
