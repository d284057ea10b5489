"""Export YOLOv5 checkpoints (pruned ones included) to ONNX and OpenVINO, fp32 and int8, written beside the weights.

    python export.py --weights yolov5n.pt --include onnx                        # yolov5n.onnx (batch 1, 640x640)
    python export.py --weights pruned.pt --int8 --data data/coco128.yaml       # + pruned-int8.onnx, calibrated
    python export.py --weights best.pt --dynamic --imgsz 320                    # any batch and size
    python export.py --weights best.pt --include openvino --int8 --data my.yaml  # best_openvino_model/ and
                                                                                # best_int8_openvino_model/ (NNCF)

After export each file's output is compared with PyTorch's on the same input (fp32 must agree within atol 1e-3 +
rtol 1e-4: boxes are in pixels; int8 prints its objectness difference) and the sizes are printed. val.py and detect.py
take the .onnx files and the OpenVINO folders."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import load_model
from utils.data import check_dataset
from utils.errors import UserError, cli
from utils.files import file_size_mb
from utils.log import LOGGER, colorstr
from utils.onnx_backend import OPSET, OnnxModel, export_onnx
from utils.openvino_backend import PRESETS, OpenVinoModel, export_openvino, ir_folder, quantize_openvino
from utils.quantize import CALIBRATION, calibration_images, dataset_images, quantize_int8
from utils.torch_utils import model_info

ROOT = Path(__file__).resolve().parent
PREFIX, PREFIX_OV = colorstr("ONNX: "), colorstr("OpenVINO: ")
FORMATS = ("onnx", "openvino")
ATOL, RTOL = 1e-3, 1e-4


def torch_output(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x))[0].numpy()


def check_outputs(runtime, x: np.ndarray, ref: np.ndarray, model=None, second: np.ndarray | None = None) -> float:
    """Max abs difference between the exported file run on x and PyTorch's `ref` (and, for a --dynamic export, on
    `second` against `model`); beyond tolerance the file (or IR folder) is removed."""
    diff = 0.0
    for inp, want in [(x, ref)] + ([(second, torch_output(model, second))] if second is not None else []):
        y = runtime.run(inp)
        same = y.shape == want.shape
        diff = max(diff, float(np.abs(y - want).max()) if same else float("inf"))
        if not same or not np.allclose(y, want, atol=ATOL, rtol=RTOL):
            path = runtime.path
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            raise UserError(f"{path.name}: {type(runtime).__name__[:-5]} differs from PyTorch by {diff:.3g} on input "
                            f"{'x'.join(map(str, inp.shape))} (allowed {ATOL:g} + {RTOL:g}*|y|); the file was "
                            "removed")
    return diff


def formats(opt: argparse.Namespace) -> set[str]:
    """--include, lower-cased; callers that build their own options (benchmarks) get ONNX unless they ask."""
    return {f.lower() for f in getattr(opt, "include", ["onnx"])}


def _prepare(w: Path, opt: argparse.Namespace):
    """(fused model, export size, metadata, calibration images or None) of one checkpoint."""
    model = load_model(w, "cpu")
    info = model_info(model, opt.imgsz[0], verbose=False)  # of the unfused model, as val.py reports it
    model.fuse()
    stride = max(int(model.stride.max()), 32)
    imgsz = tuple(int(-(-s // stride) * stride) for s in opt.imgsz)
    if imgsz != tuple(opt.imgsz):
        LOGGER.warning(f"WARNING: --imgsz {opt.imgsz} must be a multiple of stride {stride}, using {list(imgsz)}")
    meta = {"names": model.names, "stride": stride, "imgsz": list(imgsz), "dynamic": opt.dynamic,
            "params": info["params"], "GFLOPs": round(info["GFLOPs"], 4), "source": w.name, "precision": "fp32"}
    images = None
    if opt.int8:
        data = check_dataset(opt.data, splits=())
        if data["nc"] != len(model.names):
            LOGGER.warning(f"WARNING: {w.name} predicts {len(model.names)} classes, {opt.data} has {data['nc']}: "
                           "calibrating on images the model was not trained for")
        images = calibration_images(dataset_images(data), imgsz, opt.calib_images)
    return model, imgsz, meta, images


def export_weights(w: Path, opt: argparse.Namespace, dst: Path | None = None) -> dict:
    """Export one checkpoint to `dst` (default: beside it, <stem>.onnx; int8: <stem>-int8.onnx; OpenVINO:
    <stem>_openvino_model/, <stem>_int8_openvino_model/); check each against PyTorch; report."""
    model, imgsz, meta, images = _prepare(w, opt)
    include = formats(opt)
    f = Path(dst) if dst else w.with_suffix(".onnx")
    with tempfile.TemporaryDirectory() as tmp:  # without onnx in --include, the ONNX file is only the IR's source
        return _export(w, opt, include, model, imgsz, meta, images, f if "onnx" in include else Path(tmp) / f.name,
                       f)


def _export(w: Path, opt: argparse.Namespace, include: set[str], model, imgsz, meta: dict, images, f: Path,
            named: Path) -> dict:
    """ONNX file f (checked, int8 beside it with --int8), then the OpenVINO folders named after `named`."""
    LOGGER.info(f"\n{PREFIX}exporting {w} with torch {torch.__version__}, opset {opt.opset}"
                f"{', dynamic axes' if opt.dynamic else ''}...")
    export_onnx(model, f, imgsz, opt.dynamic, opt.opset, meta)
    x = images[0] if images else np.random.default_rng(0).random((1, 3, *imgsz), dtype=np.float32)
    ref = torch_output(model, x)
    second = _second_input(imgsz, meta["stride"]) if opt.dynamic else None
    diff = check_outputs(OnnxModel(f), x, ref, model, second)
    out = {"weights": str(w), "onnx": str(f), "max_abs_diff": diff, "imgsz": list(imgsz)}
    LOGGER.info(f"{PREFIX}{f} ({file_size_mb(f):.2f} MB from {file_size_mb(w):.2f} MB), ONNX Runtime vs PyTorch "
                f"max abs diff {diff:.2g}")
    if opt.int8 and "onnx" in include:
        f8 = f.with_name(f"{f.stem}-int8.onnx")
        LOGGER.info(f"{PREFIX}int8 static quantization (QDQ, per-channel weights, {opt.calibration} calibration on "
                    f"{len(images)} images from {opt.data})...")
        quantize_int8(f, f8, images, opt.calibration)
        out.update(int8=str(f8), int8_conf_diff=conf_diff(OnnxModel(f8), x, ref))
        LOGGER.info(f"{PREFIX}{f8} ({file_size_mb(f8):.2f} MB), objectness max abs diff to PyTorch "
                    f"{out['int8_conf_diff']:.3f}")
    if "openvino" in include:
        out.update(export_ir(f, named, meta, opt, images, x, ref, model, second))
    if "onnx" not in include:
        out.pop("onnx")
    return out


def export_ir(f: Path, named: Path, meta: dict, opt: argparse.Namespace, images, x: np.ndarray, ref: np.ndarray,
              model, second) -> dict:
    """OpenVINO IR folder(s) from the checked ONNX file f, beside `named`: fp32, and int8 through NNCF (--int8)."""
    d = export_openvino(f, meta, ir_folder(named))
    diff = check_outputs(OpenVinoModel(d), x, ref, model, second)
    out = {"openvino": str(d), "openvino_max_abs_diff": diff}
    LOGGER.info(f"{PREFIX_OV}{d} ({file_size_mb(d):.2f} MB), OpenVINO fp32 vs PyTorch max abs diff {diff:.2g}")
    if opt.int8:
        LOGGER.info(f"{PREFIX_OV}int8 post-training quantization (NNCF, {opt.ov_preset} preset, Detect decode in "
                    f"float) on {len(images)} images from {opt.data}...")
        d8 = quantize_openvino(d, images, ir_folder(named, int8=True), opt.ov_preset)
        out.update(openvino_int8=str(d8), openvino_int8_conf_diff=conf_diff(OpenVinoModel(d8), x, ref))
        LOGGER.info(f"{PREFIX_OV}{d8} ({file_size_mb(d8):.2f} MB), objectness max abs diff to PyTorch "
                    f"{out['openvino_int8_conf_diff']:.3f}")
    return out


def _second_input(imgsz: tuple[int, int], stride: int) -> np.ndarray:
    """A second batch and size for a --dynamic export."""
    h2, w2 = max(stride, imgsz[0] // 2 // stride * stride), imgsz[1]
    return np.random.default_rng(1).random((2, 3, h2, w2), dtype=np.float32)


def conf_diff(runtime, x: np.ndarray, ref: np.ndarray) -> float:
    """Max abs difference of the objectness column (what int8 may move; boxes are in pixels)."""
    return float(np.abs(runtime.run(x)[..., 4] - ref[..., 4]).max())


def run(opt: argparse.Namespace) -> list[dict]:
    bad = [f for f in opt.include if f.lower() not in FORMATS]
    if bad:
        raise UserError(f"--include {' '.join(bad)}: the formats here are {', '.join(FORMATS)}")
    if len(opt.imgsz) == 1:
        opt.imgsz = opt.imgsz * 2
    if len(opt.imgsz) != 2 or min(opt.imgsz) < 32:
        raise UserError(f"--imgsz takes one or two sizes (h w) of at least 32, got {opt.imgsz}")
    if opt.opset < 13:
        raise UserError(f"--opset must be at least 13 (per-channel int8 needs it), got {opt.opset}")
    if opt.calib_images < 1:
        raise UserError(f"--calib-images must be at least 1, got {opt.calib_images}")
    if opt.ov_preset not in PRESETS:
        raise UserError(f"--ov-preset must be one of {', '.join(PRESETS)}, got {opt.ov_preset}")
    if opt.calibration not in CALIBRATION:
        raise UserError(f"--calibration must be one of {', '.join(CALIBRATION)}, got {opt.calibration}")
    results = []
    for w in map(Path, opt.weights):
        if not w.is_file():
            raise UserError(f"weights not found: {w}")
        if w.suffix != ".pt":
            raise UserError(f"{w}: export.py takes PyTorch .pt checkpoints")
        results.append(export_weights(w, opt))
    files = [r[k] for r in results for k in ("onnx", "int8", "openvino", "openvino_int8") if k in r]
    LOGGER.info(f"\nExport complete. Evaluate: python val.py --weights {' '.join(files)}"
                f"{' --data ' + opt.data if opt.int8 else ''}")
    return results


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", type=str, required=True, help="checkpoint path(s)")
    p.add_argument("--include", nargs="+", default=["onnx"], help="formats: onnx, openvino (an IR folder)")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image (h, w)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    p.add_argument("--int8", action="store_true", help="also write an int8 model (static quantization on --data)")
    p.add_argument("--data", type=str, default=str(ROOT / "data/synthetic.yaml"), help="dataset yaml for int8")
    p.add_argument("--calib-images", type=int, default=100, help="int8 calibration images (from the train split)")
    p.add_argument("--calibration", default="minmax", help=f"ONNX int8 calibration: {', '.join(CALIBRATION)}")
    p.add_argument("--ov-preset", default="mixed", help=f"OpenVINO int8 (NNCF) preset: {', '.join(PRESETS)}")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
