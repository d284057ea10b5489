"""Evaluate YOLOv5 checkpoints on a dataset: P, R, mAP50, mAP50-95, size, speed.

    python val.py --weights yolov5n.pt --data coco128.yaml --imgsz 640
    python val.py --weights base.pt pruned.pt finetuned.pt --data data/synthetic.yaml   # one comparison table
    python val.py --weights best.pt best.onnx best-int8.onnx          # exported files (ONNX Runtime, CPU) beside

Writes runs/val/exp/metrics.json: a list with one object per weights file.
"""

from __future__ import annotations

import argparse
import json
import math
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh
from utils.checkpoint import load_model
from utils.coco import coco80_to_coco91, image_id, run_cocoeval, yolo_to_coco_gt
from utils.data import check_dataset
from utils.dataloaders import create_dataloader
from utils.errors import UserError, cli
from utils.files import atomic_write, file_size_mb, increment_path
from utils.labels import label_lines
from utils.log import LOGGER, colorstr
from utils.metrics import ConfusionMatrix, ap_per_class, match_predictions
from utils.nms import non_max_suppression
from utils.onnx_backend import OnnxModel, is_onnx
from utils.latency import measure, torch_runner
from utils.torch_utils import model_info, select_device, time_sync

ROOT = Path(__file__).resolve().parent
HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4


@dataclass
class ValResults:
    """What one evaluation measured. Means are over the classes that have ground truth."""

    mp: float = 0.0
    mr: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    seen: int = 0
    nt: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # instances per class
    ap_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    p: np.ndarray = field(default_factory=lambda: np.zeros(0))
    r: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ap50: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ap: np.ndarray = field(default_factory=lambda: np.zeros(0))
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # mAP50-95 per class index (mean where none)
    speed: tuple[float, float, float] = (0.0, 0.0, 0.0)  # ms per image: pre-process, inference, NMS
    loss: torch.Tensor | None = None
    jdict: list = field(default_factory=list)

    @property
    def metrics(self) -> tuple[float, float, float, float]:
        return self.mp, self.mr, self.map50, self.map


def _coco_records(predn: torch.Tensor, path: Path, class_map: list[int]) -> list[dict]:
    iid = image_id(path)
    box = xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # centre to top-left corner
    return [{"image_id": iid, "category_id": class_map[int(p[5])], "bbox": [round(x, 3) for x in b],
             "score": round(p[4], 5)} for p, b in zip(predn.tolist(), box.tolist())]


@torch.no_grad()
def evaluate(model, dataloader, names: dict[int, str], conf_thres: float = 0.001, iou_thres: float = 0.6,
             max_det: int = 300, half: bool = False, single_cls: bool = False, save_dir: Path | None = None,
             plots: bool = False, save_txt: bool = False, save_conf: bool = False, class_map: list[int] | None = None,
             compute_loss=None) -> ValResults:
    """Run `model` over `dataloader` and compute YOLOv5's metrics. Used by val.py's CLI and by train.py.

    class_map: when given, COCO-json records are collected with these category ids (index = class).
    compute_loss: a callable(train_out, targets) -> (loss, loss_items); the mean of loss_items is returned.
    """
    onnx = isinstance(model, OnnxModel)
    device = model.device if onnx else next(model.parameters()).device
    # half with fp32 weights (train.py's EMA on CUDA): autocast instead of casting the weights the EMA keeps in fp32
    autocast = half and not onnx and next(model.parameters()).dtype == torch.float32
    model.eval()
    nc = 1 if single_cls else len(names)
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    cm = ConfusionMatrix(nc=nc)
    stats, jdict, dt, seen = [], [], [0.0, 0.0, 0.0], 0
    loss = torch.zeros(3, device=device)
    if save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    pbar = tqdm(dataloader, desc=HEADER, bar_format="{l_bar}{bar:10}{r_bar}", disable=not LOGGER.isEnabledFor(20))
    for im, targets, paths, shapes in pbar:
        t0 = time_sync()
        im = im.to(device, non_blocking=True)
        im = (im.half() if half and not autocast else im.float()) / 255
        targets = targets.to(device)
        nb, _, height, width = im.shape
        t1 = time_sync()
        with torch.autocast(device.type, enabled=autocast):
            preds, train_out = model(im)
        t2 = time_sync()
        if compute_loss:
            loss += compute_loss(train_out, targets)[1]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to letterboxed pixels
        # no time limit: on a busy CPU a weak model's many boxes overrun it, and the images it skips would count as
        # missed detections (a sparse coco128 checkpoint measured 0.295 mAP50 instead of 0.460 that way)
        preds = non_max_suppression(preds, conf_thres, iou_thres, multi_label=True, agnostic=single_cls,
                                    max_det=max_det, time_limit=math.inf)
        dt[0], dt[1], dt[2] = dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + time_sync() - t2
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            nl, npr = labels.shape[0], pred.shape[0]
            path, shape, ratio_pad = Path(paths[si]), shapes[si][0], shapes[si][1]
            correct = torch.zeros(npr, len(iouv), dtype=torch.bool, device=device)
            seen += 1
            if npr == 0:
                if nl:
                    stats.append((correct, torch.zeros(0, device=device), torch.zeros(0, device=device), labels[:, 0]))
                    if plots:
                        cm.process_batch(None, labels[:, 0])
                continue
            if single_cls:
                pred[:, 5] = 0
            predn = pred.clone()
            scale_boxes(im[si].shape[1:], predn[:, :4], shape, ratio_pad)  # to original image pixels
            if nl:
                tbox = scale_boxes(im[si].shape[1:], xywh2xyxy(labels[:, 1:5]), shape, ratio_pad)
                labelsn = torch.cat((labels[:, 0:1], tbox), 1)
                correct = torch.as_tensor(match_predictions(predn, labelsn, iouv), device=device)
                if plots:
                    cm.process_batch(predn, labelsn)
            stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
            if save_txt:
                with open(save_dir / "labels" / f"{path.stem}.txt", "a") as f:
                    f.writelines(f"{x}\n" for x in label_lines(predn, shape, save_conf))
            if class_map is not None:
                jdict.extend(_coco_records(predn, path, class_map))
    return _summarise(stats, seen, nc, names, dt, loss / max(len(dataloader), 1), jdict, cm, plots, save_dir)


def _summarise(stats, seen, nc, names, dt, loss, jdict, cm, plots, save_dir) -> ValResults:
    res = ValResults(seen=seen, loss=loss, jdict=jdict, speed=tuple(t / max(seen, 1) * 1e3 for t in dt))
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)] if stats else [np.zeros(0)] * 4
    res.nt = np.bincount(stats[3].astype(int), minlength=nc)
    if len(stats[0]) and stats[0].any():
        ap = ap_per_class(*stats, plot=plots, save_dir=save_dir or Path("."), names=names)
        res.ap_classes, res.p, res.r, res.ap50, res.ap = ap.classes, ap.p, ap.r, ap.ap50, ap.ap_mean
        res.mp, res.mr, res.map50, res.map = ap.mean_results()
    res.maps = np.full(nc, res.map)
    res.maps[res.ap_classes] = res.ap
    if plots and save_dir:
        cm.plot(save_dir=save_dir, names=names)
    return res


def print_results(res: ValResults, names: dict[int, str], verbose: bool = False) -> None:
    LOGGER.info(HEADER)
    LOGGER.info(ROW % ("all", res.seen, res.nt.sum(), *res.metrics))
    if res.nt.sum() == 0:
        LOGGER.warning("WARNING: no labels found in the evaluated set, metrics cannot be computed")
    if verbose and len(names) > 1:
        for i, c in enumerate(res.ap_classes):
            LOGGER.info(ROW % (names[c], res.seen, res.nt[c], res.p[i], res.r[i], res.ap50[i], res.ap[i]))


def _class_map(names: dict[int, str], annotations: Path | None) -> list[int]:
    """COCO json category ids: COCO's 91-id scheme for an 80-class COCO dataset with an annotations file."""
    if annotations is not None and len(names) == 80:
        return coco80_to_coco91()
    return list(range(len(names)))


def _annotations_file(data: dict) -> Path | None:
    ann = data.get("annotations")
    p = Path(data["path"]) / ann if ann else Path(data["path"]) / "annotations" / "instances_val2017.json"
    return p if p.is_file() else None  # None: the ground truth is written from the YOLO labels instead


def val_loader(data: dict, task: str, imgsz: int, batch_size: int, stride: int, workers: int = 8,
               single_cls: bool = False, source: str = "dataset yaml", square: bool = False):
    """The evaluation loader of a split ('train', 'val', 'test'; 'speed' = val without rectangular batches).

    square: every image letterboxed to imgsz x imgsz (task 'speed', and models exported for one fixed shape)."""
    split = task if task in ("train", "val", "test") else "val"
    if not data.get(split):
        raise UserError(f"{source}: no '{split}' split given")
    pad, rect = (0.0, False) if task == "speed" or square else (0.5, True)
    return create_dataloader(data[split], imgsz, batch_size, stride, rect=rect, pad=pad, workers=workers,
                             nc=None if single_cls else data["nc"], prefix=colorstr(f"{split}: "))[0]


def evaluate_model(model, loader, names: dict[int, str] | None = None, **kwargs) -> dict:
    """P, R, mAP50, mAP50-95 of a model object (a fused float copy is evaluated; `model` is left as it is)."""
    m = deepcopy(model).float().eval().fuse()
    res = evaluate(m, loader, names or m.names, **kwargs)
    return {"P": res.mp, "R": res.mr, "mAP50": res.map50, "mAP50-95": res.map}


def _load_for_val(w: str, opt: argparse.Namespace, device: torch.device):
    """(model, params, GFLOPs, half, imgsz, batch size, square) for a .pt checkpoint or an exported .onnx file."""
    if is_onnx(w):
        model = OnnxModel(w)
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
    """Evaluate one checkpoint or .onnx file; print its table; return its metrics.json record."""
    model, params, gflops, half, imgsz, batch_size, square = _load_for_val(w, opt, device)
    stride = max(int(model.stride.max()), 32)
    if imgsz % stride:
        imgsz = int(np.ceil(imgsz / stride) * stride)
        LOGGER.warning(f"WARNING: --imgsz {opt.imgsz} must be a multiple of stride {stride}, using {imgsz}")
    names = {0: "item"} if opt.single_cls else model.names
    if not opt.single_cls and len(names) != data["nc"]:
        raise UserError(f"{w} predicts {len(names)} classes but {opt.data} has nc={data['nc']}")
    loader = val_loader(data, opt.task, imgsz, batch_size, stride, opt.workers, opt.single_cls, opt.data, square)
    if not is_onnx(w):
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
              "file_MB": round(file_size_mb(w), 3), "imgsz": imgsz, "images": res.seen, "instances": int(res.nt.sum()),
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
        if is_onnx(r["weights"]):
            runners[i] = OnnxModel(r["weights"]).runner(imgsz)
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
                    ".onnx: ONNX Runtime, CPU), interleaved rounds")


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
        if not Path(w).is_file():
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
