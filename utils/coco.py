"""COCO-json interop: category ids, ground truth written from YOLO labels, and pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from utils.log import LOGGER

# COCO's 91-id scheme skips these ids; the 80 used classes are the others, in order
_COCO91_UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def coco80_to_coco91() -> list[int]:
    """category_id for each of the 80 COCO class indices."""
    return [i for i in range(1, 91) if i not in _COCO91_UNUSED]


def image_id(path: str | Path) -> int | str:
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def yolo_to_coco_gt(im_files: list[str], labels: list[np.ndarray], shapes: np.ndarray, names: dict[int, str]) -> dict:
    """A COCO ground-truth dict from YOLO labels (normalised cls cx cy w h) and image (w, h) sizes."""
    images, anns = [], []
    for f, lb, (w, h) in zip(im_files, labels, shapes):
        iid = image_id(f)
        images.append({"id": iid, "file_name": Path(f).name, "width": int(w), "height": int(h)})
        for c, cx, cy, bw, bh in lb.tolist():
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": int(c), "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": i, "name": n} for i, n in names.items()]
    return {"images": images, "annotations": anns, "categories": cats}


def run_cocoeval(annotations: str | Path | dict, predictions: str | Path, im_files: list[str]) -> tuple[float, float]:
    """pycocotools' bbox evaluation over the given images; returns (mAP50-95, mAP50) and prints COCO's summary."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(annotations, dict):
            gt = COCO()
            gt.dataset = annotations
            gt.createIndex()
        else:
            gt = COCO(str(annotations))
        with open(predictions) as f:
            preds = json.load(f)
        if not preds:
            LOGGER.warning("WARNING: no predictions to evaluate with pycocotools")
            return 0.0, 0.0
        dt = gt.loadRes(preds)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = [image_id(f) for f in im_files]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    LOGGER.info("pycocotools COCOeval:\n" + out.getvalue().rstrip())
    return float(ev.stats[0]), float(ev.stats[1])
