"""Non-maximum suppression over raw YOLOv5 Detect outputs.

The rules (candidate filtering, class offsets, caps) follow YOLOv5's so that val.py reproduces upstream's mAP.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torchvision

from utils.boxes import xywh2xyxy
from utils.log import LOGGER

MAX_WH = 7680  # class offset in pixels: larger than any image side, so boxes of different classes never overlap
MAX_NMS = 30000  # candidates passed to torchvision.ops.nms per image, bounding its cost


def _with_apriori_labels(x: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """Append (n, 5) cls,xywh labels as rows with objectness 1 and a one-hot class score (autolabelling)."""
    v = torch.zeros((len(lb), x.shape[1]), device=x.device, dtype=x.dtype)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb), device=x.device), lb[:, 0].long() + 5] = 1.0
    return torch.cat((x, v), 0)


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """(n, 5+nc) rows of one image -> (k, 6) xyxy, conf, cls rows with conf above the threshold."""
    scores = x[:, 5:] * x[:, 4:5]  # conf = obj * cls
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
    conf, j = scores.max(1, keepdim=True)
    return torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]


def non_max_suppression(
    prediction: torch.Tensor | Sequence[torch.Tensor],
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    labels: Sequence[torch.Tensor] = (),
    max_det: int = 300,
    time_limit: float | None = None,
) -> list[torch.Tensor]:
    """Class-aware NMS on (bs, n, 5+nc) predictions of rows (cx, cy, w, h, obj, cls scores...).

    Returns one (k, 6) tensor per image with rows (x1, y1, x2, y2, conf, cls), sorted by conf.
    ``labels`` optionally gives per image (n, 5) cls,xywh boxes added as certain detections (autolabelling).
    ``time_limit`` (seconds, default 0.5 + 0.05 * batch size) stops early with a warning; images not reached
    get empty tensors.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]  # eval-mode Detect returns (pred, features)

    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1  # one class: single- and multi-label give the same rows
    if time_limit is None:
        time_limit = 0.5 + 0.05 * bs
    keep_obj = prediction[..., 4] > conf_thres
    output = [torch.zeros((0, 6), device=prediction.device) for _ in range(bs)]
    t0 = time.time()
    for xi, x in enumerate(prediction):
        x = x[keep_obj[xi]]
        if len(labels) and len(labels[xi]):
            x = _with_apriori_labels(x, labels[xi])
        x = _candidates(x, conf_thres, multi_label)
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if x.shape[0]:
            x = x[x[:, 4].argsort(descending=True)[:MAX_NMS]]
            offsets = x[:, 5:6] * (0 if agnostic else MAX_WH)
            keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou_thres)
            output[xi] = x[keep[:max_det]]
        if time.time() - t0 > time_limit:
            LOGGER.warning(f"NMS time limit {time_limit:.3f}s exceeded after {xi + 1}/{bs} images")
            break
    return output
