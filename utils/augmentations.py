"""Image geometry shared by training and inference, and the training augmentations.

Augmentations work on BGR uint8 images and pixel xyxy boxes (rows `cls x1 y1 x2 y2`); every random draw comes from
the `np.random.Generator` passed in, so a seeded generator repeats a run exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

# hyp.scratch-low values: what a hyp dict falls back to for augmentation keys it lacks
HYP_DEFAULTS = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5,
                "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0,
                "copy_paste": 0.0}
FILL = (114, 114, 114)  # grey for every border, as upstream, so padding looks the same in train and val


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


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 20, area_thr: float = 0.1,
                   eps: float = 1e-16) -> np.ndarray:
    """Which boxes to keep after a transform: box1 (before, already scaled) and box2 (after) are (4, n) xyxy.

    A box survives when it is wider and taller than wh_thr pixels, keeps more than area_thr of its area (so objects
    mostly cut off by the border go) and is not thinner than 1:ar_thr.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _affine_matrix(rng: np.random.Generator, in_hw: tuple[int, int], out_hw: tuple[int, int], degrees: float,
                   translate: float, scale: float, shear: float, perspective: float) -> tuple[np.ndarray, float]:
    """One 3x3 matrix for centre -> perspective -> rotate/scale -> shear -> translate, and the scale drawn."""
    c = np.eye(3)
    c[0, 2], c[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2  # move the input centre to the origin
    p = np.eye(3)
    p[2, 0], p[2, 1] = rng.uniform(-perspective, perspective, 2)
    s = rng.uniform(1 - scale, 1 + scale)
    r = np.eye(3)
    r[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=rng.uniform(-degrees, degrees), scale=s)
    sh = np.eye(3)
    sh[0, 1], sh[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    t = np.eye(3)
    t[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]  # centre lands near the output's centre
    t[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return t @ sh @ r @ p @ c, s


def random_perspective(im: np.ndarray, targets: np.ndarray, rng: np.random.Generator, degrees: float = 0.0,
                       translate: float = 0.1, scale: float = 0.5, shear: float = 0.0, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation and perspective in one warp; targets (n, 5) cls + pixel xyxy.

    border (h, w) grows (positive) or crops (negative, as for a mosaic canvas) the output on each side.
    Boxes become the bounding boxes of their transformed corners, clipped; box_candidates drops the lost ones.
    """
    out_hw = (im.shape[0] + 2 * border[0], im.shape[1] + 2 * border[1])
    m, s = _affine_matrix(rng, im.shape[:2], out_hw, degrees, translate, scale, shear, perspective)
    if border != (0, 0) or (m != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, m, dsize=out_hw[::-1], borderValue=FILL)
        else:
            im = cv2.warpAffine(im, m[:2], dsize=out_hw[::-1], borderValue=FILL)
    n = len(targets)
    if not n:
        return im, targets
    corners = np.ones((n * 4, 3))
    corners[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = corners @ m.T
    xy = (corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    boxes = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, out_hw[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, out_hw[0])
    keep = box_candidates(targets[:, 1:5].T * s, boxes.T)
    out = targets[keep].copy()
    out[:, 1:5] = boxes[keep]
    return im, out


def augment_hsv(im: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5,
                vgain: float = 0.5) -> None:
    """Jitter hue, saturation and value of a BGR uint8 image in place, through one lookup table per channel."""
    if not (hgain or sgain or vgain):
        return
    gains = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)  # OpenCV's 8-bit hue runs 0-179 and wraps around
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def mosaic4(ims: list[np.ndarray], labels: list[np.ndarray], s: int,
            centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Four images around a centre (xc, yc) on a grey 2s x 2s canvas: top-left, top-right, bottom-left, bottom-right.

    Each image touches the centre with one corner and is cut where it leaves the canvas. labels are (n, 5) cls +
    normalised cx cy w h per image; returns the canvas and (n, 5) cls + pixel xyxy clipped to it.
    """
    canvas = np.full((2 * s, 2 * s, ims[0].shape[2]), FILL[0], dtype=np.uint8)
    xc, yc = int(centre[0]), int(centre[1])
    out = []
    for k, (im, lb) in enumerate(zip(ims, labels)):
        h, w = im.shape[:2]
        x1 = xc - w if k in (0, 2) else xc  # left images end at the centre, right ones start there
        y1 = yc - h if k in (0, 1) else yc
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x1 + w, 2 * s), min(y1 + h, 2 * s)
        canvas[cy1:cy2, cx1:cx2] = im[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
        b = lb.astype(np.float64).copy()
        b[:, 1], b[:, 2] = w * (lb[:, 1] - lb[:, 3] / 2) + x1, h * (lb[:, 2] - lb[:, 4] / 2) + y1
        b[:, 3], b[:, 4] = w * (lb[:, 1] + lb[:, 3] / 2) + x1, h * (lb[:, 2] + lb[:, 4] / 2) + y1
        out.append(b)
    boxes = np.concatenate(out, 0) if out else np.zeros((0, 5))
    boxes[:, 1:] = boxes[:, 1:].clip(0, 2 * s)  # random_perspective then drops what the crop left too small
    return canvas, boxes


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio (close to 0.5) and keep the labels of both."""
    r = rng.beta(32.0, 32.0)
    blended = (im.astype(np.float32) * r + im2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return blended, np.concatenate((labels, labels2), 0)


def flip_labels(labels: np.ndarray, ud: bool, lr: bool) -> None:
    """Mirror normalised (n, 5) cls cx cy w h labels in place to match np.flipud / np.fliplr of the image."""
    if ud:
        labels[:, 2] = 1 - labels[:, 2]
    if lr:
        labels[:, 1] = 1 - labels[:, 1]
