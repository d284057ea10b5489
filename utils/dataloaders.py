"""Datasets and loaders: YOLO-format images and labels for evaluation, and image sources for detect.py."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.augmentations import letterbox
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.errors import UserError
from utils.labels import list_images, verify_dataset
from utils.log import LOGGER


def rect_batch_shapes(shapes: np.ndarray, batch_size: int, img_size: int, stride: int, pad: float) -> np.ndarray:
    """Per batch of images sorted by aspect ratio, the smallest stride-multiple (h, w) that holds them all at
    img_size on their long side, plus `pad` strides of margin. `shapes` is (n, 2) of (w, h)."""
    ar = shapes[:, 1] / shapes[:, 0]  # h / w, already sorted
    bi = np.floor(np.arange(len(shapes)) / batch_size).astype(int)
    hw = np.ones((bi[-1] + 1, 2))
    for i in range(bi[-1] + 1):
        a = ar[bi == i]
        lo, hi = a.min(), a.max()
        if hi < 1:  # all landscape: full width, height set by the tallest
            hw[i] = [hi, 1]
        elif lo > 1:  # all portrait
            hw[i] = [1, 1 / lo]
    return np.ceil(hw * img_size / stride + pad).astype(int) * stride


class LoadImagesAndLabels(Dataset):
    """Letterboxed images and their labels. Items are (image CHW uint8 RGB tensor, labels (n, 6) as
    [0, cls, cx, cy, w, h] normalised to the letterboxed image, path, (original (h, w), ((ratio h, w), (pad w, h))))."""

    def __init__(self, path, img_size: int = 640, batch_size: int = 16, rect: bool = False, stride: int = 32,
                 pad: float = 0.0, nc: int | None = None, workers: int = 8, prefix: str = ""):
        self.img_size, self.stride, self.rect = img_size, stride, rect
        files = list_images(path)
        if not files:
            raise UserError(f"{prefix}no images found in {path}")
        good, warnings = verify_dataset(files, nc, workers)
        for w in warnings:
            LOGGER.warning(f"{prefix}WARNING: {w}")
        if not good:
            raise UserError(f"{prefix}no usable images in {path} ({len(files)} found, all skipped)")
        counts = {s: sum(g.status == s for g in good) for s in ("ok", "missing", "empty")}
        LOGGER.info(f"{prefix}Scanned {path}: {counts['ok']} images with labels, "
                    f"{counts['missing'] + counts['empty']} backgrounds, {len(files) - len(good)} skipped")
        self.im_files = [g.im_file for g in good]
        self.labels = [g.labels for g in good]
        self.shapes = np.array([g.shape for g in good], dtype=np.float64)  # (w, h)
        if rect:
            order = (self.shapes[:, 1] / self.shapes[:, 0]).argsort()  # default sort as upstream: ties batch alike
            self.im_files = [self.im_files[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.shapes = self.shapes[order]
            self.batch = np.floor(np.arange(len(order)) / batch_size).astype(int)
            self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, img_size, stride, pad)

    def __len__(self) -> int:
        return len(self.im_files)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """BGR image resized so that its long side is img_size; returns it, original (h, w) and resized (h, w)."""
        im = cv2.imread(self.im_files[i])
        if im is None:
            raise UserError(f"cannot decode image {self.im_files[i]}")
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA  # INTER_AREA shrinks without aliasing
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def __getitem__(self, index: int):
        im, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        im, ratio, pad = letterbox(im, shape, auto=False, scaleup=False)
        shapes = (h0, w0), ((h / h0, w / w0), pad)
        labels = self.labels[index].copy()
        if len(labels):
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            labels[:, 1:] = xyxy2xywhn(labels[:, 1:], w=im.shape[1], h=im.shape[0], clip=True, eps=1e-3)
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels)
        im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(im), out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        ims, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i  # image index within the batch
        return torch.stack(ims, 0), torch.cat(labels, 0), paths, shapes


def create_dataloader(path, imgsz: int, batch_size: int, stride: int, rect: bool = False, pad: float = 0.0,
                      workers: int = 8, nc: int | None = None, prefix: str = "") -> tuple[DataLoader, Dataset]:
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, rect=rect, stride=stride, pad=pad, nc=nc,
                                  workers=workers, prefix=prefix)
    batch_size = min(batch_size, len(dataset))
    nw = min(os.cpu_count() or 1, batch_size if batch_size > 1 else 0, workers)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=nw,
                        pin_memory=torch.cuda.is_available(), collate_fn=LoadImagesAndLabels.collate_fn)
    return loader, dataset


class LoadImages:
    """Images from a file, folder, glob or list file for detect.py; yields (path, letterboxed CHW RGB, original BGR)."""

    def __init__(self, source: str, img_size: int = 640, stride: int = 32, auto: bool = True):
        self.files = list_images(str(source))
        if not self.files:
            raise UserError(f"no images found in {source}")
        self.img_size, self.stride, self.auto = img_size, stride, auto

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self):
        for path in self.files:
            im0 = cv2.imread(path)
            if im0 is None:
                LOGGER.warning(f"WARNING: {path}: cannot decode image, skipped")
                continue
            im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
            yield path, np.ascontiguousarray(im.transpose((2, 0, 1))[::-1]), im0
