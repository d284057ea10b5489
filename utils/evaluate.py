"""Evaluation: run a model over a dataloader and compute YOLOv5's metrics (P, R, mAP50, mAP50-95), as val.py's
CLI, train.py's epochs and prune.py's before/after figures do.
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh
from utils.coco import image_id
from utils.dataloaders import create_dataloader
from utils.errors import UserError
from utils.labels import label_lines
from utils.log import LOGGER, colorstr
from utils.metrics import ConfusionMatrix, ap_per_class, match_predictions
from utils.nms import non_max_suppression
from utils.backends import ExportedModel
from utils.torch_utils import time_sync

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
    onnx = isinstance(model, ExportedModel)
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
    res = ValResults(seen=seen, loss=loss / max(len(dataloader), 1), jdict=jdict,
                     speed=tuple(t / max(seen, 1) * 1e3 for t in dt))
    return _summarise(res, stats, cm, names, plots, save_dir)


def _summarise(res: ValResults, stats: list, cm: ConfusionMatrix, names: dict[int, str], plots: bool,
               save_dir: Path | None) -> ValResults:
    """Fill `res` with the per-class and mean metrics of the collected (correct, conf, class, label class) stats."""
    nc = cm.nc
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
