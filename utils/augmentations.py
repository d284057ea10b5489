"""Image geometry shared by training and inference. Training-only augmentations join this file later."""

from __future__ import annotations

import cv2
import numpy as np


def letterbox(im: np.ndarray, new_shape: int | tuple[int, int] = 640, color=(114, 114, 114), auto: bool = True,
              scaleup: bool = True, stride: int = 32) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to new_shape (h, w) with grey borders split evenly on both sides.

    auto: pad only up to a multiple of stride (minimum rectangle) instead of the full new_shape.
    scaleup: allow enlarging; off for val so that small images are not blurred.
    Returns the image, the (w, h) scale ratios and the (left, top) padding in pixels (fractional halves).
    """
    h, w = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / h, new_shape[1] / w)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = new_shape[1] - new_w, new_shape[0] - new_h
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw, dh = dw / 2, dh / 2
    if (w, h) != (new_w, new_h):
        im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # -0.1/+0.1 puts the odd pixel of an uneven padding on the bottom/right side
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, (r, r), (dw, dh)
