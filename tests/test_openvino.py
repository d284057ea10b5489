"""export.py --include openvino: an IR folder equal to PyTorch in fp32 (plain, dynamic, an upstream-built file), NNCF
int8 with the Detect decode left in float, and IR folders in val.py and detect.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openvino as ov  # a requirement (requirements.txt): a missing one is a failure, not a skip
import pytest
import torch
import yaml

import export
import val
from conftest import assert_one_line_error, make_dataset, run_script, shared_path
from helpers import assert_detects_like
from models.yolo import DetectionModel
from utils.checkpoint import load_model, save_checkpoint
from utils.errors import UserError
from utils.openvino_backend import OpenVinoModel

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = Path(__file__).resolve().parent
ATOL, RTOL = 1e-3, 1e-4  # export.py's bound: float32 sums reordered by fusion and the runtime's kernels


@pytest.fixture(scope="module")
def n_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = DetectionModel("yolov5n.yaml", nc=3)
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):  # non-trivial BN to fold
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    m.names = {0: "a", 1: "b", 2: "c"}
    f = tmp_path_factory.mktemp("n") / "n.pt"
    save_checkpoint({"model": m.half(), "ema": None, "epoch": -1, "opt": {}}, f)
    return f


def _torch_out(w: Path, x: np.ndarray) -> np.ndarray:
    """The reference: PyTorch on the checkpoint, unfused (export fuses, so a fusion error shows too)."""
    with torch.inference_mode():
        return load_model(w)(torch.from_numpy(x))[0].numpy()


def _ov_out(folder: Path, x: np.ndarray) -> np.ndarray:
    """OpenVINO run here in true fp32, not through the repo's OpenVinoModel wrapper."""
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(next(folder.glob("*.xml")))), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[0]


def test_ir_equals_pytorch_and_carries_metadata(n_ckpt, tmp_path):
    w = Path(shutil.copy(n_ckpt, tmp_path / "m.pt"))
    rec = export.main(["--weights", str(w), "--include", "openvino", "--imgsz", "160"])[0]
    d = Path(rec["openvino"])
    assert d == tmp_path / "m_openvino_model" and sorted(p.name for p in d.iterdir()) == [
        "m.bin", "m.xml", "metadata.yaml"]
    assert not (tmp_path / "m.onnx").exists() and "onnx" not in rec  # onnx not asked for: only the IR's source
    meta = yaml.safe_load((d / "metadata.yaml").read_text())  # upstream's keys (stride, names) and ours
    assert meta["stride"] == 32 and meta["names"] == {0: "a", 1: "b", 2: "c"} and meta["precision"] == "fp32"
    assert meta["imgsz"] == [160, 160] and meta["params"] == sum(p.numel() for p in load_model(w).parameters())
    x = np.random.default_rng(3).random((1, 3, 160, 160), dtype=np.float32)
    ref, y = _torch_out(w, x), _ov_out(d, x)
    assert y.shape == ref.shape == (1, 3 * (5 * 5 + 10 * 10 + 20 * 20), 8)
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=RTOL)
    assert rec["openvino_max_abs_diff"] == pytest.approx(float(np.abs(OpenVinoModel(d).run(x) - ref).max()), abs=1e-6)


def test_dynamic_ir_takes_other_sizes_and_batches(n_ckpt, tmp_path):
    w = Path(shutil.copy(n_ckpt, tmp_path / "d.pt"))
    d = Path(export.main(["--weights", str(w), "--include", "openvino", "onnx", "--imgsz", "128", "--dynamic"])[0][
        "openvino"])
    assert (tmp_path / "d.onnx").is_file()  # both asked for
    x = np.random.default_rng(4).random((2, 3, 96, 160), dtype=np.float32)
    np.testing.assert_allclose(_ov_out(d, x), _torch_out(w, x), atol=ATOL, rtol=RTOL)
    m = OpenVinoModel(d)
    assert m.dynamic and m.imgsz is None


def test_upstream_built_file_exports(tmp_path):
    """tests/data/upstream-tiny.pt was built and saved by upstream YOLOv5's own code."""
    w = Path(shutil.copy(TESTS / "data" / "upstream-tiny.pt", tmp_path / "up.pt"))
    d = Path(export.main(["--weights", str(w), "--include", "openvino", "--imgsz", "64"])[0]["openvino"])
    x = np.random.default_rng(5).random((1, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(_ov_out(d, x), _torch_out(w, x), atol=ATOL, rtol=RTOL)


def _walk_back_from_output(model) -> set[str]:
    """Op types between the last convolutions and the output, found independently of the repo's decode_ops."""
    types, seen = set(), set()
    stack = [model.get_results()[0].input_value(0).get_node()]
    while stack:
        n = stack.pop()
        if id(n) in seen or n.get_type_name() in ("Convolution", "Constant", "Parameter"):
            continue
        seen.add(id(n))
        types.add(n.get_type_name())
        stack.extend(v.get_node() for v in n.input_values())
    return types


def test_int8_leaves_decode_float_and_keeps_map(tmp_path, shapes_yaml):
    w = Path(shutil.copy(shared_path("fixtures", "upstream-yolov5n-shapes.pt"), tmp_path / "s.pt"))
    rec = export.main(["--weights", str(w), "--include", "openvino", "--imgsz", "320", "--int8", "--data",
                       str(shapes_yaml), "--calib-images", "32"])[0]
    d32, d8 = Path(rec["openvino"]), Path(rec["openvino_int8"])
    assert d8.name == "s_int8_openvino_model" and (d8 / "s.bin").stat().st_size < 0.4 * (d32 / "s.bin").stat().st_size
    meta = yaml.safe_load((d8 / "metadata.yaml").read_text())
    assert meta["precision"] == "int8" and meta["calibration_images"] == 32
    q = ov.Core().read_model(str(d8 / "s.xml"))
    assert sum(op.get_type_name() == "FakeQuantize" for op in q.get_ops()) > 50  # the convolutions are quantized
    # pixels and confidences never share a uint8 scale (NNCF's defaults already agree; this guards the outcome)
    assert "FakeQuantize" not in _walk_back_from_output(q)
    common = ["--data", str(shapes_yaml), "--imgsz", "320", "--workers", "0", "--no-plots", "--latency-runs", "0"]
    pt, fp32, int8 = val.main(["--weights", str(w), str(d32), str(d8), *common, "--project", str(tmp_path / "v")])
    assert pt["mAP50"] == pytest.approx(0.711, abs=0.01)  # upstream's val.py figure for this file (rect batches)
    assert fp32["mAP50"] == pytest.approx(pt["mAP50"], abs=0.02)  # square letterbox instead of rect batches
    assert abs(int8["mAP50"] - fp32["mAP50"]) <= 0.03  # as the ONNX int8 test allows at 320 px, 32 images
    assert fp32["params"] == pt["params"] and int8["file_MB"] < 0.4 * fp32["file_MB"]


def test_detect_on_an_ir_folder_matches_pytorch(tmp_path):
    w = Path(shutil.copy(shared_path("fixtures", "upstream-yolov5n-shapes.pt"), tmp_path / "s.pt"))
    d = export.main(["--weights", str(w), "--include", "openvino", "--imgsz", "320", "--dynamic"])[0]["openvino"]
    assert_detects_like(w, d, tmp_path)


def test_bad_input_is_one_line(tmp_path, n_ckpt):
    with pytest.raises(UserError, match="the formats here are onnx, openvino"):
        export.run(export.parse_opt(["--weights", str(n_ckpt), "--include", "tflite"]))
    with pytest.raises(UserError, match="--ov-preset must be one of mixed, performance"):
        export.run(export.parse_opt(["--weights", str(n_ckpt), "--include", "openvino", "--ov-preset", "fast"]))
    empty = tmp_path / "x_openvino_model"
    empty.mkdir()
    (empty / "x.xml").write_text("<net>not a model</net>")
    with pytest.raises(UserError, match="no metadata.yaml"):
        OpenVinoModel(empty)
    (empty / "metadata.yaml").write_text("stride: 32\nnames: {0: a}\n")
    with pytest.raises(UserError, match="not a readable OpenVINO model"):
        OpenVinoModel(empty)
    r = run_script("val.py", "--weights", str(empty), "--data", str(make_dataset(tmp_path / "ds")))
    assert_one_line_error(r, "x_openvino_model", "not a readable OpenVINO model")
