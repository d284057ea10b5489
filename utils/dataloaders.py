"""Datasets and loaders: YOLO-format images and labels for training and evaluation, and image sources for detect.py."""

from __future__ import annotations

import math
import os
import random
from multiprocessing.pool import ThreadPool

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from utils.augmentations import (HYP_DEFAULTS, augment_hsv, flip_labels, letterbox, mixup, mosaic4,
                                 random_perspective)
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.errors import UserError
from utils.label_cache import atomic_write_readable, folder_writable, verify_dataset_cached
from utils.labels import list_images
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


def _available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class LoadImagesAndLabels(Dataset):
    """Images and their labels. Items are (image CHW uint8 RGB tensor, labels (n, 6) as [0, cls, cx, cy, w, h]
    normalised to the output image, path, shapes); shapes is (original (h, w), ((ratio h, w), (pad w, h))) for
    letterboxed images and None for mosaics.

    augment=False (val): letterbox only. augment=True (train), with hyp keys as in hyp.scratch-low.yaml (missing
    keys take those defaults): a 4-image mosaic with probability hyp['mosaic'] (optionally mixed up with a second
    mosaic, probability hyp['mixup']) or the letterboxed image, then random_perspective, HSV jitter and flips.
    hyp['copy_paste'] is ignored: it needs segment labels, which this box-only loader does not read.

    `mosaic` is a plain attribute: train.py sets it False for the last --close-mosaic epochs. Loader workers are
    not persistent, so the change reaches them with the next iter(loader).
    cache: None, 'ram' (resized images kept in memory) or 'disk' (resized images saved once as <image>.<size>.npy).
    Augmentation draws come from self.rng, seeded with `seed` and reseeded per worker by seed_worker.
    """

    def __init__(self, path, img_size: int = 640, batch_size: int = 16, rect: bool = False, stride: int = 32,
                 pad: float = 0.0, nc: int | None = None, workers: int = 8, prefix: str = "", augment: bool = False,
                 hyp: dict | None = None, cache: str | bool | None = None, seed: int = 0):
        self.img_size, self.stride, self.rect, self.augment = img_size, stride, rect, augment
        self.hyp = {**HYP_DEFAULTS, **(hyp or {})} if augment else None
        self.mosaic = bool(augment and not rect and self.hyp["mosaic"] > 0)  # rect batches need one shape each
        self.rng = np.random.default_rng(seed)
        if augment and self.hyp["copy_paste"] > 0:
            LOGGER.warning(f"{prefix}WARNING: copy_paste needs segment labels and is ignored by this loader")
        files = list_images(path)
        if isinstance(path, (list, tuple)) and len(path) > 3:  # e.g. prune.py's calibration files: not every name
            path = f"{len(path)} paths ({path[0]}, ...)"
        if not files:
            raise UserError(f"{prefix}no images found in {path}")
        good, warnings = verify_dataset_cached(files, nc, workers, prefix)
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
        self.ims: list[tuple[np.ndarray, tuple[int, int]] | None] = [None] * len(self.im_files)
        self.cache = self._cache_images(cache, workers, prefix)

    def __len__(self) -> int:
        return len(self.im_files)

    def npy_file(self, i: int) -> str:
        """Disk-cache file of image i; the size is in the name because the image is stored resized."""
        return f"{self.im_files[i]}.{self.img_size}.npy"

    def _cache_images(self, cache, workers: int, prefix: str) -> str | None:
        """Fill the RAM cache or write missing/stale .npy files; returns the mode in effect ('ram', 'disk', None)."""
        mode = "ram" if cache is True else (cache or None)
        if mode not in (None, "ram", "disk"):
            raise UserError(f"--cache must be 'ram' or 'disk', not {cache!r}")
        if mode is None:
            return None
        if mode == "ram":
            r = self.img_size / self.shapes.max(1)
            need = float((np.ceil(self.shapes[:, 0] * r) * np.ceil(self.shapes[:, 1] * r) * 3).sum())
            avail = _available_memory()
            if avail is not None and need > 0.9 * avail:
                LOGGER.warning(f"{prefix}WARNING: --cache ram needs {need / 1e9:.1f}GB but only "
                               f"{avail / 1e9:.1f}GB is available, not caching images")
                return None
        elif not all(folder_writable(d) for d in {os.path.dirname(f) for f in self.im_files}):
            LOGGER.warning(f"{prefix}WARNING: --cache disk needs writable image folders, not caching images")
            return None
        with ThreadPool(max(1, min(workers, 8))) as pool:
            try:
                nbytes = sum(pool.map(self._cache_one if mode == "ram" else self._write_npy, range(len(self))))
            except OSError as e:  # e.g. a read-only dataset folder: train without the disk cache
                LOGGER.warning(f"{prefix}WARNING: cannot write the image cache ({e}), not caching images")
                return None
        LOGGER.info(f"{prefix}Caching images ({nbytes / 1e9:.3f}GB {mode})")
        return mode

    def _cache_one(self, i: int) -> int:
        im, hw0, _ = self._read_resized(i)
        self.ims[i] = im, hw0
        return im.nbytes

    def _write_npy(self, i: int) -> int:
        f = self.npy_file(i)
        if not os.path.isfile(f) or os.stat(f).st_mtime_ns < os.stat(self.im_files[i]).st_mtime_ns:
            im = self._read_resized(i)[0]
            atomic_write_readable(f, lambda fh: np.save(fh, im, allow_pickle=False))
        return os.stat(f).st_size

    def _read_resized(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        im = cv2.imread(self.im_files[i])
        if im is None:
            raise UserError(f"cannot decode image {self.im_files[i]}")
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA  # INTER_AREA shrinks without aliasing
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """BGR image resized so that its long side is img_size; returns it, original (h, w) and resized (h, w).
        A RAM-cached image is returned as is: callers must not modify it in place."""
        if self.cache == "ram":
            im, hw0 = self.ims[i]
            return im, hw0, im.shape[:2]
        if self.cache == "disk":
            im = np.load(self.npy_file(i), allow_pickle=False)
            w0, h0 = self.shapes[i]
            return im, (int(h0), int(w0)), im.shape[:2]
        return self._read_resized(i)

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Mosaic of `index` and 3 random images, warped and cropped back to img_size; labels cls + pixel xyxy."""
        s = self.img_size
        idx = [index, *self.rng.integers(0, len(self), 3).tolist()]
        centre = self.rng.uniform(0.5 * s, 1.5 * s, 2)
        im, labels = mosaic4([self.load_image(i)[0] for i in idx], [self.labels[i] for i in idx], s, centre)
        return random_perspective(im, labels, self.rng, **self._geometry(), border=(-(s // 2), -(s // 2)))

    def _geometry(self) -> dict:
        return {k: self.hyp[k] for k in ("degrees", "translate", "scale", "shear", "perspective")}

    def _letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        im, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        im, ratio, pad = letterbox(im, shape, auto=False, scaleup=self.augment)
        labels = self.labels[index].copy()
        if len(labels):
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        return im, labels, ((h0, w0), ((h / h0, w / w0), pad))

    def __getitem__(self, index: int):
        hyp = self.hyp
        if self.mosaic and self.rng.random() < hyp["mosaic"]:
            im, labels = self.load_mosaic(index)
            shapes = None
            if self.rng.random() < hyp["mixup"]:
                im, labels = mixup(im, labels, *self.load_mosaic(int(self.rng.integers(len(self)))), self.rng)
        else:
            im, labels, shapes = self._letterboxed(index)
            if self.augment:
                im, labels = random_perspective(im, labels, self.rng, **self._geometry())
        if len(labels):
            labels[:, 1:] = xyxy2xywhn(labels[:, 1:], w=im.shape[1], h=im.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(im, self.rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            ud, lr = self.rng.random() < hyp["flipud"], self.rng.random() < hyp["fliplr"]
            im = np.flipud(im) if ud else im
            im = np.fliplr(im) if lr else im
            flip_labels(labels, ud, lr)
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


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: torch gives each worker base_seed + worker_id, the base drawn from the loader's
    generator at every iter(loader); seeding from it makes workers differ from each other and from epoch to epoch,
    yet repeat exactly for the same generator seed."""
    cv2.setNumThreads(0)  # each worker is one busy process already; OpenCV's own threads would fight the trainer's
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    dataset = torch.utils.data.get_worker_info().dataset
    if isinstance(dataset, LoadImagesAndLabels):
        dataset.rng = np.random.default_rng(seed)


def create_dataloader(path, imgsz: int, batch_size: int, stride: int, hyp: dict | None = None, augment: bool = False,
                      rect: bool = False, pad: float = 0.0, workers: int = 8, nc: int | None = None, prefix: str = "",
                      cache: str | bool | None = None, shuffle: bool = False, rank: int = -1, seed: int = 0,
                      world_size: int | None = None) -> tuple[DataLoader, LoadImagesAndLabels]:
    """A loader over LoadImagesAndLabels, repeatable for a given seed on CPU.

    rank != -1: a DistributedSampler (same seed on every rank) over world_size replicas (default: the initialised
    process group's size, else 1); call loader.sampler.set_epoch(epoch) each epoch. batch_size is per process.
    Workers are not persistent, so changes to dataset.mosaic take effect at the next iter(loader).
    """
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING: --rect is incompatible with shuffle, setting shuffle=False")
        shuffle = False
    rank_seed = seed + max(rank, 0)  # ranks see different augmentations of different images
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, rect=rect, stride=stride, pad=pad, nc=nc, workers=workers,
                                  prefix=prefix, augment=augment, hyp=hyp, cache=cache, seed=rank_seed)
    batch_size = min(batch_size, len(dataset))
    sampler, nd = None, 1
    if rank != -1:
        nd = world_size or (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
        sampler = DistributedSampler(dataset, num_replicas=nd, rank=rank, shuffle=shuffle, seed=seed)
    nw = min(max(1, (os.cpu_count() or 1) // nd), batch_size if batch_size > 1 else 0, workers)
    generator = torch.Generator()
    generator.manual_seed(rank_seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                        num_workers=nw, pin_memory=torch.cuda.is_available(), collate_fn=LoadImagesAndLabels.collate_fn,
                        worker_init_fn=seed_worker, generator=generator)
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
