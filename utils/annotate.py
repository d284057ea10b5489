"""Drawing detections on images (boxes with class labels) with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

# A fixed palette so that a class keeps its colour across images and runs (RGB hex)
_HEX = ("FF3838 FF9D97 FF701F FFB21D CFD231 48F90A 92CC17 3DDB86 1A9334 00D4BB "
        "2C99A8 00C2FF 344593 6473FF 0018EC 8438FF 520085 CB38FF FF95C8 FF37C7").split()


def class_color(i: int, bgr: bool = True) -> tuple[int, int, int]:
    h = _HEX[int(i) % len(_HEX)]
    rgb = tuple(int(h[k:k + 2], 16) for k in (0, 2, 4))
    return rgb[::-1] if bgr else rgb


def draw_box(im: np.ndarray, xyxy, label: str = "", color=(128, 128, 128), line_width: int | None = None) -> None:
    """Draw one box, with its label on a filled tab above it (below if there is no room), on a BGR image in place."""
    lw = line_width or max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
    p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(im, p1, p2, color, thickness=lw, lineType=cv2.LINE_AA)
    if not label:
        return
    tf = max(lw - 1, 1)
    scale = lw / 3
    w, h = cv2.getTextSize(label, 0, fontScale=scale, thickness=tf)[0]
    outside = p1[1] - h - 3 >= 0
    p2 = p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3
    cv2.rectangle(im, p1, p2, color, -1, cv2.LINE_AA)
    text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)  # dark text on light tabs
    cv2.putText(im, label, (p1[0], p1[1] - 2 if outside else p1[1] + h + 2), 0, scale, text_color,
                thickness=tf, lineType=cv2.LINE_AA)
