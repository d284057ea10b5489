"""Bounding-box conversions, IoU, clipping and rescaling.

Formats: ``xyxy`` is (x1, y1, x2, y2) corners; ``xywh`` is (cx, cy, w, h) centre and size;
``xywhn`` is ``xywh`` normalised by image width/height (the YOLO label format).
Conversions accept torch tensors or numpy arrays of shape (..., 4) and return a new object
of the same kind; ``clip_boxes`` and ``scale_boxes`` work in place as YOLOv5 users expect.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

Boxes = Union[torch.Tensor, np.ndarray]


def _copy(x: Boxes) -> Boxes:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: Boxes) -> Boxes:
    """Corners (x1, y1, x2, y2) -> centre and size (cx, cy, w, h)."""
    y = _copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x: Boxes) -> Boxes:
    """Centre and size (cx, cy, w, h) -> corners (x1, y1, x2, y2)."""
    y = _copy(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xywhn2xyxy(x: Boxes, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> Boxes:
    """Normalised (cx, cy, w, h) -> pixel corners, shifted by a letterbox padding (padw, padh)."""
    y = _copy(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Boxes, w: float = 640, h: float = 640, clip: bool = False, eps: float = 0.0) -> Boxes:
    """Pixel corners -> normalised (cx, cy, w, h); ``clip`` first limits boxes to the image minus ``eps``."""
    if clip:
        x = _copy(x)
        clip_boxes(x, (h - eps, w - eps))
    y = _copy(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def box_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    lt = torch.max(box1[:, None, :2], box2[None, :, :2])
    rb = torch.min(box1[:, None, 2:], box2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area1 = (box1[:, 2:] - box1[:, :2]).prod(1)
    area2 = (box2[:, 2:] - box2[:, :2]).prod(1)
    return inter / (area1[:, None] + area2[None, :] - inter + eps)


def clip_boxes(boxes: Boxes, shape: Sequence[float]) -> Boxes:
    """Clip xyxy boxes in place to an image of ``shape`` (h, w); returns ``boxes`` for chaining."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(
    img1_shape: Sequence[int],
    boxes: Boxes,
    img0_shape: Sequence[int],
    ratio_pad: tuple | None = None,
) -> Boxes:
    """Map xyxy boxes (in place) from a letterboxed image ``img1_shape`` (h, w) back to ``img0_shape`` (h, w).

    ``ratio_pad`` is ((gain, gain), (padw, padh)) as recorded by the letterbox; when absent the gain and a
    centred padding are recomputed from the two shapes.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        # round(x - 0.1) reproduces the integer padding the letterbox really applied
        padw = round((img1_shape[1] - img0_shape[1] * gain) / 2 - 0.1)
        padh = round((img1_shape[0] - img0_shape[0] * gain) / 2 - 0.1)
    else:
        gain = ratio_pad[0][0]
        padw, padh = ratio_pad[1][0], ratio_pad[1][1]
    boxes[..., [0, 2]] -= padw
    boxes[..., [1, 3]] -= padh
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)
