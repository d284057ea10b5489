"""export.py: ONNX fp32 equal to PyTorch (plain, dynamic, pruned models), int8 close in mAP, and .onnx weights in val.py
and detect.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort  # a requirement (requirements.txt): a missing one is a failure, not a skip
import pytest
import torch

import export
import val
from conftest import assert_one_line_error, make_dataset, run_script, shared_path
from helpers import assert_detects_like, spread_gammas
from models.yolo import DetectionModel
from utils.checkpoint import load_model, save_checkpoint
from utils.errors import UserError
from utils.onnx_backend import OnnxModel, read_metadata
from utils.openvino_backend import OpenVinoModel
from utils.pruning.pruner import PruneSettings, prune_model
from utils.quantize import decode_nodes
from utils.torch_utils import count_params

pytestmark = pytest.mark.usefixtures("one_thread")


def _ckpt(model, path: Path) -> Path:
    save_checkpoint({"model": model.half(), "ema": None, "epoch": -1, "opt": {}}, path)
    model.float()
    return path


@pytest.fixture(scope="module")
def n_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = spread_gammas(DetectionModel("yolov5n.yaml", nc=3), 0)
    m.names = {0: "a", 1: "b", 2: "c"}
    return _ckpt(m, tmp_path_factory.mktemp("n") / "n.pt")


# export.py's own bound (float32 sums reordered by Conv+BN fusion and ONNX Runtime's kernels; boxes in pixels)
ATOL, RTOL = 1e-3, 1e-4


def _torch_out(w: Path, x: np.ndarray) -> np.ndarray:
    """The reference: PyTorch on the checkpoint, unfused (export fuses, so a fusion error shows too)."""
    with torch.inference_mode():
        return load_model(w)(torch.from_numpy(x))[0].numpy()


def _ort_out(f: str | Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime run here, not through export.py's check or the repo's OnnxModel wrapper."""
    s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _assert_onnx_matches(w: Path, f: str | Path, shape: tuple[int, ...], seed: int = 3) -> None:
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    ref, y = _torch_out(w, x), _ort_out(f, x)
    assert y.shape == ref.shape and ref[..., 4].max() > ref[..., 4].min()  # real predictions, not constants
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=RTOL)


def test_onnx_equals_pytorch_and_carries_metadata(n_ckpt):
    rec = export.main(["--weights", str(n_ckpt), "--imgsz", "192", "256"])[0]
    f = Path(rec["onnx"])
    assert f == n_ckpt.with_suffix(".onnx") and rec["max_abs_diff"] < 1e-3
    m = OnnxModel(f)
    assert m.imgsz == (192, 256) and not m.dynamic and m.names == {0: "a", 1: "b", 2: "c"}
    assert m.params == count_params(load_model(n_ckpt)) and m.gflops > 0
    assert read_metadata(f)["precision"] == "fp32"
    x = np.random.default_rng(3).random((1, 3, 192, 256), dtype=np.float32)
    ref = _torch_out(n_ckpt, x)
    assert ref.shape == (1, 3 * (24 * 32 + 12 * 16 + 6 * 8), 8)
    np.testing.assert_allclose(_ort_out(f, x), ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(m(torch.from_numpy(x))[0].numpy(), _ort_out(f, x))  # the wrapper adds nothing
    with pytest.raises(UserError, match="--dynamic"):
        m(torch.zeros(1, 3, 256, 256))


def test_dynamic_export_takes_other_sizes_and_batches(n_ckpt, tmp_path):
    w = shutil.copy(n_ckpt, tmp_path / "d.pt")
    f = Path(export.main(["--weights", str(w), "--imgsz", "128", "--dynamic"])[0]["onnx"])
    m = OnnxModel(f)
    assert m.dynamic and m.imgsz is None
    for shape in ((1, 3, 128, 128), (3, 3, 96, 160)):
        _assert_onnx_matches(Path(w), f, shape, seed=1)


def test_dynamic_int8_export_runs_at_other_sizes(n_ckpt, tmp_path):
    """--dynamic --int8: ONNX and OpenVINO int8 files that take any size, their predictions near fp32's."""
    w = shutil.copy(n_ckpt, tmp_path / "d.pt")
    data = make_dataset(tmp_path / "data", nc=3)
    rec = export.main(["--weights", str(w), "--include", "onnx", "openvino", "--imgsz", "128", "--dynamic", "--int8",
                       "--data", str(data), "--calib-images", "4"])[0]
    x = np.random.default_rng(2).random((2, 3, 96, 160), dtype=np.float32)
    ref = _torch_out(Path(w), x)
    for m in (OnnxModel(rec["int8"]), OpenVinoModel(rec["openvino_int8"])):
        assert m.dynamic and m.precision == "int8"
        y = m.run(x)
        assert y.shape == ref.shape
        assert np.abs(y[..., :4] - ref[..., :4]).mean() < 0.5  # pixels (measured 0.1): rounded, not broken


def test_pruned_model_exports_and_matches(n_ckpt, tmp_path):
    res = prune_model(load_model(n_ckpt), PruneSettings(percent=0.5))
    res.model.names = {0: "a", 1: "b", 2: "c"}
    w = _ckpt(res.model, tmp_path / "pruned.pt")
    rec = export.main(["--weights", str(w), "--imgsz", "160"])[0]
    _assert_onnx_matches(w, rec["onnx"], (1, 3, 160, 160))
    # the unpruned export of its own: run alone (or on another xdist worker) no other test has written one
    full_rec = export.main(["--weights", str(shutil.copy(n_ckpt, tmp_path / "full.pt")), "--imgsz", "160"])[0]
    full, pruned = OnnxModel(full_rec["onnx"]), OnnxModel(rec["onnx"])
    # half the channels of most convs: their weights (c_in x c_out) shrink to about a quarter; only the stem's input
    # and Detect's outputs are fixed, so far less than 0.7 is left (this model: 0.27)
    assert pruned.params == count_params(res.model) < 0.7 * full.params
    assert Path(rec["onnx"]).stat().st_size < 0.7 * Path(full_rec["onnx"]).stat().st_size


def test_decode_nodes_are_everything_after_the_last_convs(n_ckpt, tmp_path):
    import onnx

    w = shutil.copy(n_ckpt, tmp_path / "g.pt")
    proto = onnx.load(export.main(["--weights", str(w), "--imgsz", "64"])[0]["onnx"])
    names = set(decode_nodes(proto))
    by_name = {n.name: n for n in proto.graph.node}
    ops = {by_name[n].op_type for n in names}
    assert "Conv" not in ops and {"Sigmoid", "Concat", "Reshape"} <= ops
    # every excluded node's inputs come from the graph input side only through Convs or other excluded nodes
    producer = {o: n for n in proto.graph.node for o in n.output}
    for n in names:
        for i in by_name[n].input:
            p = producer.get(i)
            assert p is None or p.name in names or p.op_type == "Conv"
    assert sum(by_name[n].op_type == "Sigmoid" for n in names) == 3  # one per Detect level


@pytest.mark.slow
def test_int8_on_a_trained_model_within_3_map_points(tmp_path, shapes_yaml):
    w = Path(shutil.copy(shared_path("fixtures", "upstream-yolov5n-shapes.pt"), tmp_path / "shapes.pt"))
    rec = export.main(["--weights", str(w), "--imgsz", "320", "--int8", "--data", str(shapes_yaml),
                       "--calib-images", "32"])[0]
    f32, f8 = Path(rec["onnx"]), Path(rec["int8"])
    # int8 weights take a quarter of fp32's bytes, plus scales and the float decode: README measures 2.21 / 7.13 MB
    assert f8.name == "shapes-int8.onnx" and f8.stat().st_size < 0.4 * f32.stat().st_size
    meta = read_metadata(f8)
    assert meta["precision"] == "int8" and meta["calibration_images"] == 32 and meta["params"] == OnnxModel(f32).params
    records = val.main(["--weights", str(w), str(f32), str(f8), "--data", str(shapes_yaml), "--imgsz", "320",
                        "--workers", "0", "--latency-runs", "3", "--project", str(tmp_path / "v"), "--no-plots"])
    pt, fp32, int8 = records
    assert pt["mAP50"] == pytest.approx(0.711, abs=0.01)  # upstream's val.py figure for this file (rect batches)
    assert fp32["mAP50"] == pytest.approx(pt["mAP50"], abs=0.02)  # square letterbox instead of rect batches
    # README measures 0.6 points for this file (640 px, 100 calibration images); 3 allow for 320 px and 32 images
    assert abs(int8["mAP50"] - fp32["mAP50"]) <= 0.03
    assert fp32["params"] == pt["params"] and fp32["GFLOPs"] == pytest.approx(pt["GFLOPs"], rel=1e-3)
    assert all(r["b1_ms"] > 0 for r in records) and int8["file_MB"] < fp32["file_MB"]


def test_val_and_detect_on_a_dynamic_export_match_pytorch(tmp_path, shapes_yaml):
    w = Path(shutil.copy(shared_path("fixtures", "upstream-yolov5n-shapes.pt"), tmp_path / "s.pt"))
    f = export.main(["--weights", str(w), "--imgsz", "320", "--dynamic"])[0]["onnx"]
    common = ["--data", str(shapes_yaml), "--imgsz", "320", "--workers", "0", "--no-plots", "--latency-runs", "0"]
    a, b = val.main(["--weights", str(w), f, *common, "--project", str(tmp_path / "v")])
    assert a["mAP50"] == pytest.approx(0.711, abs=0.01)  # upstream's val.py figure; the same rect batches for both
    for k in ("P", "R", "mAP50", "mAP50-95"):
        assert a[k] == pytest.approx(b[k], abs=2e-3), k
    assert a["params"] == b["params"]
    assert_detects_like(w, f, tmp_path)


def test_square_checkpoint_evaluation_matches_its_fixed_shape_export(tmp_path, shapes_yaml):
    """val.py --square letterboxes a checkpoint's images as its fixed-shape export sees them: the same figures; without
    it, the checkpoint's rectangular batches (upstream's) give others."""
    w = Path(shutil.copy(shared_path("fixtures", "upstream-yolov5n-shapes.pt"), tmp_path / "s.pt"))
    f = export.main(["--weights", str(w), "--imgsz", "320"])[0]["onnx"]
    common = ["--data", str(shapes_yaml), "--imgsz", "320", "--workers", "0", "--no-plots", "--latency-runs", "0",
              "--project", str(tmp_path / "v"), "--batch-size", "1"]
    square, onnx = val.main(["--weights", str(w), f, "--square", *common])
    rect = val.main(["--weights", str(w), *common])[0]
    assert square["square"] and onnx["square"] and not rect["square"]
    for k in ("P", "R", "mAP50", "mAP50-95"):
        assert square[k] == pytest.approx(onnx[k], abs=2e-3), k
    assert max(abs(square[k] - rect[k]) for k in ("P", "R", "mAP50", "mAP50-95")) > 2e-3
    assert rect["mAP50"] == pytest.approx(0.711, abs=0.01)  # upstream's figure: rect batches stay the default


def test_fixed_export_in_val_uses_batch_1_square(n_ckpt, tmp_path, log_lines):
    data = make_dataset(tmp_path / "ds", n=3, nc=3)
    w = shutil.copy(n_ckpt, tmp_path / "f.pt")
    f = export.main(["--weights", str(w), "--imgsz", "96"])[0]["onnx"]
    rec = val.main(["--weights", f, "--data", str(data), "--imgsz", "640", "--batch-size", "4", "--workers", "0",
                    "--no-plots", "--project", str(tmp_path / "v")])[0]
    assert rec["imgsz"] == 96 and rec["images"] == 3
    assert any("evaluating at batch 1, square 96" in x for x in log_lines)
    assert json.loads((tmp_path / "v/exp/metrics.json").read_text())[0]["weights"] == f


def test_bad_input_is_one_line(tmp_path, n_ckpt):
    w = str(n_ckpt)
    assert_one_line_error(run_script("export.py", "--weights", w, "--include", "tflite"), "tflite", "onnx")
    assert_one_line_error(run_script("export.py", "--weights", w, "--imgsz", "320", "320", "320"), "--imgsz")
    assert_one_line_error(run_script("export.py", "--weights", w, "--opset", "11"), "--opset")
    assert_one_line_error(run_script("export.py", "--weights", str(tmp_path / "none.pt")), "not found")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert_one_line_error(run_script("val.py", "--weights", str(junk), "--data", str(make_dataset(tmp_path / "d"))),
                          "junk.onnx", "not a readable ONNX model")
    assert_one_line_error(run_script("export.py", "--weights", str(junk)), ".pt")


def test_onnx_without_yolo_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 32, 32])])
    f = tmp_path / "other.onnx"
    # IR and opset pinned: a newer onnx than onnxruntime (seen: onnx 1.23, onnxruntime 1.30) writes an IR it can't read
    onnx.save(helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), str(f))
    with pytest.raises(UserError, match="no YOLOv5 metadata"):
        OnnxModel(f)


def test_coco_fixture_exports_within_tolerance(tmp_path):
    w = Path(shutil.copy(shared_path("fixtures", "yolov5n-coco.pt"), tmp_path / "c.pt"))
    rec = export.main(["--weights", str(w), "--imgsz", "320"])[0]
    assert OnnxModel(rec["onnx"]).names[0] == "person"
    _assert_onnx_matches(w, rec["onnx"], (1, 3, 320, 320))
