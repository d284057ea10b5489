"""Evaluate YOLOv5 checkpoints on a dataset: P, R, mAP50, mAP50-95, size, speed.

    python val.py --weights yolov5n.pt --data coco128.yaml --imgsz 640
    python val.py --weights base.pt pruned.pt finetuned.pt --data data/synthetic.yaml   # one comparison table
    python val.py --weights best.pt best.onnx best-int8.onnx          # exported files (ONNX Runtime, CPU) beside
    python val.py --weights best.pt best_openvino_model best_int8_openvino_model   # OpenVINO IR folders (CPU)
    python val.py --weights best.pt --square    # every image letterboxed to imgsz x imgsz, as a fixed-shape export

Checkpoints are evaluated in rectangular batches padded by half a stride, as upstream's val.py does (its figures are
reproduced); --square evaluates them as their fixed-shape exports see the images, so the two figures compare.

Writes runs/val/exp/metrics.json: a list with one object per weights file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import load_model
from utils.coco import coco80_to_coco91, run_cocoeval, yolo_to_coco_gt
from utils.data import check_dataset
from utils.errors import UserError, cli
from utils.evaluate import evaluate, print_results, val_loader
from utils.files import atomic_write, file_size_mb, increment_path
from utils.latency import measure, torch_runner
from utils.log import LOGGER, colorstr
from utils.backends import is_exported, load_exported
from utils.torch_utils import model_info, select_device

ROOT = Path(__file__).resolve().parent


def _class_map(names: dict[int, str], annotations: Path | None) -> list[int]:
    """COCO json category ids: COCO's 91-id scheme for an 80-class COCO dataset with an annotations file."""
    if annotations is not None and len(names) == 80:
        return coco80_to_coco91()
    return list(range(len(names)))


def _annotations_file(data: dict) -> Path | None:
    ann = data.get("annotations")
    p = Path(data["path"]) / ann if ann else Path(data["path"]) / "annotations" / "instances_val2017.json"
    return p if p.is_file() else None  # None: the ground truth is written from the YOLO labels instead


def _load_for_val(w: str, opt: argparse.Namespace, device: torch.device):
    """(model, params, GFLOPs, half, imgsz, batch size, square) for a .pt checkpoint or an exported file/folder."""
    if is_exported(w):
        model = load_exported(w)
        imgsz, batch, square = opt.imgsz, opt.batch_size, False
        if model.imgsz is not None:  # a fixed-shape export: batch 1, square letterbox at its size
            if model.imgsz[0] != model.imgsz[1]:
                raise UserError(f"{w} was exported at {model.imgsz[0]}x{model.imgsz[1]}; val.py needs a square "
                                "export or one with --dynamic")
            if opt.imgsz != model.imgsz[0] or opt.batch_size != 1:
                LOGGER.info(f"{w} was exported for 1x3x{model.imgsz[0]}x{model.imgsz[1]}: evaluating at batch 1, "
                            f"square {model.imgsz[0]} (rectangular batches need an export with --dynamic)")
            imgsz, batch, square = model.imgsz[0], 1, True
        return model, model.params, model.gflops, False, imgsz, batch, square
    model = load_model(w, device)
    info = model_info(model, opt.imgsz)  # the summary line; params and GFLOPs of the unfused model, as trained
    model.fuse()
    half = opt.half and device.type != "cpu"  # fp16 only on CUDA
    model.half() if half else model.float()
    return model, info["params"], info["GFLOPs"], half, opt.imgsz, opt.batch_size, False


def validate_weights(w: str, data: dict, opt: argparse.Namespace, save_dir: Path, device: torch.device) -> dict:
    """Evaluate one checkpoint or exported file; print its table; return its metrics.json record."""
    model, params, gflops, half, imgsz, batch_size, square = _load_for_val(w, opt, device)
    stride = max(int(model.stride.max()), 32)
    if imgsz % stride:
        imgsz = int(np.ceil(imgsz / stride) * stride)
        LOGGER.warning(f"WARNING: --imgsz {opt.imgsz} must be a multiple of stride {stride}, using {imgsz}")
    names = {0: "item"} if opt.single_cls else model.names
    if not opt.single_cls and len(names) != data["nc"]:
        raise UserError(f"{w} predicts {len(names)} classes but {opt.data} has nc={data['nc']}")
    square = square or opt.square
    loader = val_loader(data, opt.task, imgsz, batch_size, stride, opt.workers, opt.single_cls, opt.data, square)
    if not is_exported(w):
        model(torch.zeros(1, 3, imgsz, imgsz, device=device).type_as(next(model.parameters())))  # warm-up
    annotations = _annotations_file(data) if opt.save_json else None
    class_map = _class_map(data["names"], annotations) if opt.save_json else None
    res = evaluate(model, loader, names, opt.conf_thres, opt.iou_thres, opt.max_det, half, opt.single_cls,
                   save_dir, opt.plots, opt.save_txt, opt.save_conf, class_map)
    print_results(res, names, opt.verbose)
    LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s"
                % (*res.speed, (batch_size, 3, imgsz, imgsz)))
    record = {"weights": str(w), "P": res.mp, "R": res.mr, "mAP50": res.map50, "mAP50-95": res.map,
              "params": params, "GFLOPs": round(gflops, 3), "ms_per_img": round(res.speed[1], 3),
              "file_MB": round(file_size_mb(w), 3), "imgsz": imgsz, "square": square, "images": res.seen,
              "instances": int(res.nt.sum()),
              "speed_ms": {"pre": res.speed[0], "inference": res.speed[1], "nms": res.speed[2]}}
    if opt.save_json:
        pred_json = save_dir / f"{Path(w).stem}_predictions.json"
        atomic_write(pred_json, lambda f: json.dump(res.jdict, f), mode="w")
        LOGGER.info(f"Saved {len(res.jdict)} COCO-format predictions to {pred_json}")
        ds = loader.dataset
        gt = annotations or yolo_to_coco_gt(ds.im_files, ds.labels, ds.shapes, data["names"])
        record["coco_mAP50-95"], record["coco_mAP50"] = run_cocoeval(gt, pred_json, ds.im_files)
    return record


def batch1_latency(records: list[dict], imgsz: int, device: torch.device, runs: int) -> None:
    """Add each model's batch-1 latency (fused, fp32, interleaved rounds, median) to its record."""
    runners = {}
    for i, r in enumerate(records):
        if is_exported(r["weights"]):
            runners[i] = load_exported(r["weights"]).runner(imgsz)
        else:
            runners[i] = torch_runner(load_model(r["weights"], device, fuse=True), imgsz, device)
    LOGGER.info(f"Batch-1 latency at {imgsz}: {runs} runs per model in interleaved rounds...")
    for i, t in measure(runners, runs=runs, rounds=5).items():
        records[i].update(b1_ms=round(t["ms"], 2), b1_ms_p10=round(t["p10"], 2), b1_ms_p90=round(t["p90"], 2))


def model_labels(paths: list[str]) -> list[str]:
    """Short row names: the file name, or `<run>/<file>` where file names repeat, else the path."""
    def run_label(p: Path) -> str:
        run = p.parent.parent if p.parent.name == "weights" else p.parent
        return f"{run.name}/{p.name}" if run.name else p.name

    labels = [Path(p).name for p in paths]
    for shorten in (run_label, str):
        repeated = {x for x in labels if labels.count(x) > 1}
        labels = [shorten(Path(p)) if x in repeated else x for p, x in zip(paths, labels)]
    return labels


def print_comparison(records: list[dict]) -> None:
    """One row per checkpoint: what a before/after comparison needs."""
    labels = model_labels([r["weights"] for r in records])
    w = max(len(x) for x in labels) + 2
    b1 = all("b1_ms" in r for r in records)
    lat_h = f"{'b1 ms':>8}" if b1 else ""
    LOGGER.info(f"\n{'Model':<{w}}{'P':>8}{'R':>8}{'mAP50':>8}{'mAP50-95':>10}{'params':>12}{'GFLOPs':>8}"
                f"{'ms/img':>8}{lat_h}{'MB':>8}")
    for r, label in zip(records, labels):
        lat = f"{r['b1_ms']:>8.1f}" if b1 else ""
        LOGGER.info(f"{label:<{w}}{r['P']:>8.3f}{r['R']:>8.3f}{r['mAP50']:>8.3f}"
                    f"{r['mAP50-95']:>10.3f}{r['params']:>12,}{r['GFLOPs']:>8.2f}{r['ms_per_img']:>8.1f}{lat}"
                    f"{r['file_MB']:>8.2f}")
    if b1:
        LOGGER.info("ms/img: inference per image at --batch-size; b1 ms: batch-1 median (PyTorch: fused fp32; "
                    ".onnx: ONNX Runtime, CPU; OpenVINO folders: OpenVINO, CPU), interleaved rounds")


def run(opt: argparse.Namespace) -> list[dict]:
    if opt.task == "speed":
        opt.conf_thres, opt.iou_thres, opt.plots = 0.25, 0.45, False
    if opt.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {opt.batch_size}")
    if not 0 <= opt.conf_thres <= 1 or not 0 <= opt.iou_thres <= 1:
        raise UserError("--conf-thres and --iou-thres must be between 0 and 1")
    data = check_dataset(opt.data, splits=())
    device = select_device(opt.device)
    for w in opt.weights:
        if not Path(w).is_file() and not is_exported(w):
            raise UserError(f"weights not found: {w}")
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    records = []
    for i, w in enumerate(opt.weights):
        sub = save_dir if len(opt.weights) == 1 else save_dir / Path(w).stem
        sub = sub if len(opt.weights) == 1 or not sub.exists() else save_dir / f"{Path(w).stem}_{i}"
        sub.mkdir(parents=True, exist_ok=True)
        LOGGER.info(f"\n{colorstr('val: ')}{w}")
        records.append(validate_weights(w, data, opt, sub, device))
    if len(records) > 1:
        if opt.latency_runs > 0:
            batch1_latency(records, records[0]["imgsz"], device, opt.latency_runs)
        print_comparison(records)
    atomic_write(save_dir / "metrics.json", lambda f: json.dump(records, f, indent=2), mode="w")
    LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))} (metrics.json)")
    return records


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=str, default=str(ROOT / "data/synthetic.yaml"), help="dataset yaml")
    p.add_argument("--weights", nargs="+", type=str, required=True, help="checkpoint path(s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--square", action="store_true",
                   help="letterbox every image to imgsz x imgsz (as fixed-shape exports are), not rectangular batches")
    p.add_argument("--task", default="val", choices=("train", "val", "test", "speed"), help="split, or speed")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file (and run COCOeval)")
    p.add_argument("--project", default=str(ROOT / "runs/val"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="save plots")
    p.add_argument("--latency-runs", type=int, default=30,
                   help="with several --weights: batch-1 runs per model for the latency column (0: off)")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
