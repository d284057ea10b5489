"""int8 ONNX through ONNX Runtime static quantization: QDQ format, per-channel int8 weights, uint8 activations
calibrated on real images.

The Detect decode (sigmoid, grid offsets, anchor scaling, concat) stays float: its output mixes box coordinates in
pixels (0..640) with confidences (0..1), and one uint8 scale over both would round every confidence to 0. The
decode is found from the graph, not from names: every node between the last convolutions and the output.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np

from utils.augmentations import letterbox
from utils.errors import UserError
from utils.labels import list_images
from utils.onnx_backend import INPUT, OUTPUT, import_ort, read_metadata, save_onnx, set_metadata

CALIBRATION = ("minmax", "entropy", "percentile")


def decode_nodes(proto) -> list[str]:
    """Names of the nodes that compute the output from the last Conv outputs (walking back from OUTPUT)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    seen, stack, names = set(), [OUTPUT], []
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node.op_type == "Conv":
            continue
        seen.add(node.name)
        names.append(node.name)
        stack.extend(node.input)
    return names


def calibration_images(files: list[str], imgsz: tuple[int, int], n: int) -> list[np.ndarray]:
    """Up to n images letterboxed to imgsz as (1, 3, h, w) float32 RGB in 0..1, spread evenly over `files`."""
    picks = [files[i] for i in np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)]
    out = []
    for f in picks:
        im = cv2.imread(f)
        if im is None:
            continue
        im = letterbox(im, imgsz, auto=False)[0]
        out.append(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255)
    if not out:
        raise UserError("no readable calibration images")
    return out


def dataset_images(data: dict, split: str = "train") -> list[str]:
    """The image files of a checked dataset's split (falls back to val when there is no train split)."""
    path = data.get(split) or data.get("val")
    files = list_images(path) if path else []
    if not files:
        raise UserError(f"no images in the dataset's '{split}' split for int8 calibration")
    return files


def _dynamic(proto) -> bool:
    """Whether the ONNX graph's input has a named (dynamic) dimension."""
    return any(d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim)


def quantize_int8(src: str | Path, dst: str | Path, images: list[np.ndarray], calibration: str = "minmax") -> Path:
    """Write `dst`: the int8 QDQ version of the fp32 ONNX file `src`, calibrated on `images` ((1,3,h,w) arrays).

    The fp32 file's metadata is kept, with precision 'int8' and the calibration recorded.
    """
    import onnx

    import_ort()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration not in CALIBRATION:
        raise UserError(f"--calibration must be one of {', '.join(CALIBRATION)}, got {calibration}")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(images)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT: x}

    meta = read_metadata(src)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # shape inference + graph optimisation, as ORT recommends; its symbolic inference fails on --dynamic axes
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=_dynamic(onnx.load(str(src))))
        exclude = decode_nodes(onnx.load(str(pre)))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        nodes_to_exclude=exclude)
        proto = onnx.load(str(out))
    set_metadata(proto, {**meta, "precision": "int8", "calibration": calibration, "calibration_images": len(images)})
    save_onnx(proto, dst)
    return Path(dst)
