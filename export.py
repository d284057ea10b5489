"""Export YOLOv5 checkpoints (pruned ones included) to ONNX, fp32 and int8, written beside the weights.

    python export.py --weights yolov5n.pt --include onnx                        # yolov5n.onnx (batch 1, 640x640)
    python export.py --weights pruned.pt --int8 --data data/coco128.yaml       # + pruned-int8.onnx, calibrated
    python export.py --weights best.pt --dynamic --imgsz 320                    # any batch and size

After export the ONNX Runtime output is compared with PyTorch's on the same input (fp32 must agree within
atol 1e-3 + rtol 1e-4: boxes are in pixels) and the file sizes are printed. val.py and detect.py take the .onnx files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import load_model
from utils.data import check_dataset
from utils.errors import UserError, cli
from utils.files import file_size_mb
from utils.log import LOGGER, colorstr
from utils.onnx_backend import OPSET, OnnxModel, export_onnx
from utils.quantize import CALIBRATION, calibration_images, dataset_images, quantize_int8
from utils.torch_utils import model_info

ROOT = Path(__file__).resolve().parent
PREFIX = colorstr("ONNX: ")
FORMATS = ("onnx",)
ATOL, RTOL = 1e-3, 1e-4


def torch_output(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x))[0].numpy()


def check_outputs(session: OnnxModel, x: np.ndarray, ref: np.ndarray) -> float:
    """Max abs difference between ONNX Runtime on x and PyTorch's `ref`; beyond tolerance the file is removed."""
    y = session.run(x)
    same = y.shape == ref.shape
    diff = float(np.abs(y - ref).max()) if same else float("inf")
    if not same or not np.allclose(y, ref, atol=ATOL, rtol=RTOL):
        session.path.unlink(missing_ok=True)
        raise UserError(f"{session.path.name}: ONNX Runtime differs from PyTorch by {diff:.3g} on input "
                        f"{'x'.join(map(str, x.shape))} (allowed {ATOL:g} + {RTOL:g}*|y|); the file was removed")
    return diff


def export_weights(w: Path, opt: argparse.Namespace, dst: Path | None = None) -> dict:
    """Export one checkpoint to `dst` (default: beside it, <stem>.onnx; int8: <stem>-int8.onnx); check; report."""
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
    f = Path(dst) if dst else w.with_suffix(".onnx")
    LOGGER.info(f"\n{PREFIX}exporting {w} with torch {torch.__version__}, opset {opt.opset}"
                f"{', dynamic axes' if opt.dynamic else ''}...")
    export_onnx(model, f, imgsz, opt.dynamic, opt.opset, meta)
    x = images[0] if images else np.random.default_rng(0).random((1, 3, *imgsz), dtype=np.float32)
    ref, session = torch_output(model, x), OnnxModel(f)
    diff = check_outputs(session, x, ref)
    if opt.dynamic:  # a second batch and size through the same file
        h2, w2 = max(stride, imgsz[0] // 2 // stride * stride), imgsz[1]
        x2 = np.random.default_rng(1).random((2, 3, h2, w2), dtype=np.float32)
        diff = max(diff, check_outputs(session, x2, torch_output(model, x2)))
    out = {"weights": str(w), "onnx": str(f), "max_abs_diff": diff, "imgsz": list(imgsz)}
    LOGGER.info(f"{PREFIX}{f} ({file_size_mb(f):.2f} MB from {file_size_mb(w):.2f} MB), ONNX Runtime vs PyTorch "
                f"max abs diff {diff:.2g}")
    if opt.int8:
        f8 = f.with_name(f"{f.stem}-int8.onnx")
        LOGGER.info(f"{PREFIX}int8 static quantization (QDQ, per-channel weights, {opt.calibration} calibration on "
                    f"{len(images)} images from {opt.data})...")
        quantize_int8(f, f8, images, opt.calibration)
        y8 = OnnxModel(f8).run(x)
        conf = float(np.abs(y8[..., 4] - ref[..., 4]).max())
        out.update(int8=str(f8), int8_conf_diff=conf)
        LOGGER.info(f"{PREFIX}{f8} ({file_size_mb(f8):.2f} MB), objectness max abs diff to PyTorch {conf:.3f} "
                    f"(check its mAP: python val.py --weights {f} {f8} --data {opt.data} --imgsz {imgsz[0]})")
    return out


def run(opt: argparse.Namespace) -> list[dict]:
    bad = [f for f in opt.include if f.lower() not in FORMATS]
    if bad:
        raise UserError(f"--include {' '.join(bad)}: only {', '.join(FORMATS)} is supported here")
    if len(opt.imgsz) == 1:
        opt.imgsz = opt.imgsz * 2
    if len(opt.imgsz) != 2 or min(opt.imgsz) < 32:
        raise UserError(f"--imgsz takes one or two sizes (h w) of at least 32, got {opt.imgsz}")
    if opt.opset < 13:
        raise UserError(f"--opset must be at least 13 (per-channel int8 needs it), got {opt.opset}")
    if opt.calib_images < 1:
        raise UserError(f"--calib-images must be at least 1, got {opt.calib_images}")
    if opt.calibration not in CALIBRATION:
        raise UserError(f"--calibration must be one of {', '.join(CALIBRATION)}, got {opt.calibration}")
    results = []
    for w in map(Path, opt.weights):
        if not w.is_file():
            raise UserError(f"weights not found: {w}")
        if w.suffix != ".pt":
            raise UserError(f"{w}: export.py takes PyTorch .pt checkpoints")
        results.append(export_weights(w, opt))
    LOGGER.info(f"\nExport complete. Evaluate: python val.py --weights {' '.join(r['onnx'] for r in results)}"
                f"{' ' + ' '.join(r['int8'] for r in results if 'int8' in r) if opt.int8 else ''}")
    return results


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", type=str, required=True, help="checkpoint path(s)")
    p.add_argument("--include", nargs="+", default=["onnx"], help="formats: onnx")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image (h, w)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    p.add_argument("--int8", action="store_true", help="also write an int8 model (static quantization on --data)")
    p.add_argument("--data", type=str, default=str(ROOT / "data/synthetic.yaml"), help="dataset yaml for int8")
    p.add_argument("--calib-images", type=int, default=100, help="int8 calibration images (from the train split)")
    p.add_argument("--calibration", default="minmax", help=f"int8 calibration: {', '.join(CALIBRATION)}")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
