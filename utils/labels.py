"""Finding images and checking YOLO-format labels.

Labels live beside images with `images` swapped for `labels` and the extension for `.txt`; one `class cx cy w h`
line per object, normalised to [0, 1]. Polygon lines (`class x1 y1 x2 y2 ...`) are reduced to their boxes.
A bad image or label file is reported with its path and left out; the rest of the dataset is still used.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import UserError

IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"}


def list_images(path: str | Path | list) -> list[str]:
    """Image files from folders (searched recursively), glob patterns, list files (.txt, one path a line, relative
    to the list's folder) or single files; sorted and without duplicates."""
    files = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = str(p)
        if "*" in p:
            files.extend(glob.glob(p, recursive=True))
        elif os.path.isdir(p):
            files.extend(glob.glob(os.path.join(p, "**", "*.*"), recursive=True))
        elif os.path.isfile(p) and p.endswith(".txt"):
            parent = os.path.dirname(p)
            with open(p) as f:
                lines = [x.strip() for x in f.read().splitlines() if x.strip()]
            files.extend(os.path.normpath(os.path.join(parent, x)) if not os.path.isabs(x) else x for x in lines)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UserError(f"image path does not exist: {p}")
    return sorted({f for f in files if f.rsplit(".", 1)[-1].lower() in IMG_FORMATS})


def img2label_paths(img_paths: list[str]) -> list[str]:
    """/data/images/a/b.jpg -> /data/labels/a/b.txt (the last 'images' folder in the path is swapped)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(x.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


def exif_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation, as decoders that honour it will return."""
    w, h = img.size
    try:
        if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            return h, w
    except Exception:  # malformed EXIF: ignore it, as the decoders do
        pass
    return w, h


@dataclass
class ImageLabels:
    """One verified image: its path, (width, height), labels (n, 5) as cls cx cy w h normalised, and notes."""

    im_file: str
    shape: tuple[int, int]
    labels: np.ndarray
    status: str = "ok"  # ok | missing (no label file) | empty (label file with no lines)
    warnings: list[str] = field(default_factory=list)


class LabelError(ValueError):
    """A label file that cannot be used as it is: the image is skipped with this message."""


def _parse_label_file(lb_file: str, nc: int | None) -> tuple[np.ndarray, str, list[str]]:
    """(labels, status, warnings) of one YOLO label file; LabelError (one line) for anything unusable."""
    if not os.path.isfile(lb_file):
        return np.zeros((0, 5), np.float32), "missing", []
    try:
        with open(lb_file, encoding="utf-8") as f:
            rows = [x.split() for x in f.read().strip().splitlines() if x.strip()]
    except UnicodeDecodeError:
        raise LabelError("not UTF-8 text") from None
    if not rows:
        return np.zeros((0, 5), np.float32), "empty", []
    boxes = []
    for row in rows:
        if len(row) != 5 and (len(row) < 7 or len(row) % 2 == 0):
            raise LabelError(f"a line has {len(row)} fields, expected 5 (class cx cy w h) or a polygon")
        try:
            v = np.array(row, dtype=np.float64)  # in float64 '1e39' stays finite and fails a range check below
        except ValueError:
            raise LabelError(f"a value is not a number: {' '.join(row)[:60]!r}") from None
        if len(row) > 5:  # polygon -> its bounding box
            xy = v[1:].reshape(-1, 2)
            (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
            v = np.array([v[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        boxes.append(v)
    lb = np.stack(boxes)
    if not np.isfinite(lb).all():  # 'nan' and 'inf' parse as floats and slip through every range check below
        raise LabelError("a value is nan or inf")
    cls = lb[:, 0]
    if (cls < 0).any() or (cls != np.round(cls)).any():
        raise LabelError("class indices must be non-negative integers")
    if nc is not None and (cls >= nc).any():
        raise LabelError(f"class {int(cls.max())} is out of range for nc={nc}")
    if (lb[:, 1:] < 0).any() or (lb[:, 1:] > 1).any():
        raise LabelError("coordinates outside [0, 1] (labels must be normalised)")
    lb = lb.astype(np.float32)
    _, keep = np.unique(lb, axis=0, return_index=True)
    warnings = []
    if len(keep) < len(lb):
        warnings.append(f"{lb_file}: {len(lb) - len(keep)} duplicate labels removed")
        lb = lb[np.sort(keep)]
    return lb, "ok", warnings


def verify_image_label(im_file: str, lb_file: str, nc: int | None) -> ImageLabels | str:
    """An ImageLabels for a good pair, or a one-line reason naming the file for a pair to leave out."""
    try:
        with Image.open(im_file) as im:
            im.verify()  # header and structure; does not decode pixels
        with Image.open(im_file) as im:
            shape = exif_size(im)
            fmt = (im.format or "").lower()
        if shape[0] < 10 or shape[1] < 10:
            return f"{im_file}: image smaller than 10 pixels, skipped"
        if fmt == "jpeg":
            with open(im_file, "rb") as f:
                f.seek(-2, 2)
                if f.read() != b"\xff\xd9":  # a JPEG ends with the EOI marker; its absence means truncation
                    return f"{im_file}: corrupt JPEG (truncated), skipped"
    except Exception as e:
        return f"{im_file}: unreadable image ({type(e).__name__}), skipped"
    try:
        labels, status, warnings = _parse_label_file(lb_file, nc)
    except LabelError as e:
        return f"{lb_file}: bad label file ({e}), image skipped"
    if status == "empty":
        warnings.append(f"{lb_file}: empty label file, image used as background (no objects)")
    return ImageLabels(im_file, shape, labels, status, warnings)


def verify_dataset(im_files: list[str], nc: int | None, workers: int = 8) -> tuple[list[ImageLabels], list[str]]:
    """Verify every image/label pair in parallel; return the good ones and the warnings (one line each)."""
    lb_files = img2label_paths(im_files)
    with ThreadPool(max(1, min(workers, 16))) as pool:
        results = pool.starmap(verify_image_label, [(i, lb, nc) for i, lb in zip(im_files, lb_files)])
    good = [r for r in results if isinstance(r, ImageLabels)]
    warnings = [r for r in results if isinstance(r, str)] + [w for r in good for w in r.warnings]
    return good, warnings


def label_lines(det, shape: tuple[int, ...], with_conf: bool = False) -> list[str]:
    """YOLO label lines `cls cx cy w h [conf]` (normalised to the image) from (n, 6) xyxy,conf,cls pixel rows."""
    from utils.boxes import xyxy2xywhn

    det = det.detach().cpu().numpy() if hasattr(det, "detach") else np.asarray(det)
    xywh = xyxy2xywhn(det[:, :4].astype(np.float64), w=shape[1], h=shape[0])
    rows = np.c_[det[:, 5], xywh, det[:, 4]] if with_conf else np.c_[det[:, 5], xywh]
    return [" ".join(f"{v:g}" for v in r) for r in rows.tolist()]
