"""Training data pipeline: augmented samples, close-mosaic, seeds, distributed sampling, label and image caches."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import utils.label_cache as label_cache
from conftest import ROOT
from helpers import COLOURS, assert_boxes_on_objects
from utils.augmentations import HYP_DEFAULTS
from utils.boxes import xywhn2xyxy
from utils.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.hyp import load_hyp

OFF = {**HYP_DEFAULTS, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "fliplr": 0.0,
       "mosaic": 0.0}  # every augmentation off; tests switch on the one they check


def colour_dataset(root: Path, n: int = 6, size=(96, 128), per_image: int = 2, seed: int = 0,
                   one_class: bool = False) -> Path:
    """n lossless PNGs with per_image solid rectangles (class k painted COLOURS[k], distinct within an image, side
    by side so they never overlap) and their labels; one_class: image i holds only class i. Returns the images
    folder (root/images/train)."""
    rng = np.random.default_rng(seed)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    h, w = size
    strip = w // per_image
    for i in range(n):
        im = np.zeros((h, w, 3), np.uint8)
        classes = [i % len(COLOURS)] * per_image if one_class else rng.permutation(len(COLOURS))[:per_image]
        lines = []
        for k, c in enumerate(classes):
            bw, bh = int(rng.integers(16, strip - 4)), int(rng.integers(16, h // 2))
            x1, y1 = k * strip + int(rng.integers(0, strip - bw - 2)), int(rng.integers(0, h - bh))
            im[y1:y1 + bh, x1:x1 + bw] = COLOURS[c]
            lines.append(f"{c} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / "train" / f"im{i}.png"), im)
        (root / "labels" / "train" / f"im{i}.txt").write_text("\n".join(lines) + "\n")
    return root / "images" / "train"


def sample_boxes(im: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A dataset item back to a BGR HWC image and (n, 5) cls + pixel xyxy boxes."""
    bgr = np.ascontiguousarray(im.numpy().transpose(1, 2, 0)[..., ::-1])
    xyxy = xywhn2xyxy(labels[:, 2:].numpy().astype(np.float64), bgr.shape[1], bgr.shape[0])
    return bgr, np.c_[labels[:, 1].numpy(), xyxy]


ROTATED = {**OFF, "degrees": 20, "shear": 5, "perspective": 3e-4, "translate": 0.1, "scale": 0.5}


@pytest.mark.parametrize("name,hyp,min_fill,tol,strict", [
    ("val letterbox", None, 0.9, 1.5, True),
    ("train letterbox", OFF, 0.9, 1.5, True),
    ("fliplr", {**OFF, "fliplr": 1.0}, 0.9, 1.5, True),
    ("flipud", {**OFF, "flipud": 1.0}, 0.9, 1.5, True),
    ("mosaic", {**OFF, "mosaic": 1.0}, 0.9, 1.5, False),
    ("mosaic, default geometry and flips", {**HYP_DEFAULTS, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}, 0.9, 1.5, False),
    ("single image, rotate/shear/perspective", ROTATED, 0.4, 3.0, False),
])
def test_training_samples_keep_every_box_on_its_object(tmp_path, name, hyp, min_fill, tol, strict):
    img = colour_dataset(tmp_path, n=6)
    for seed in range(3):
        ds = LoadImagesAndLabels(img, 128, 4, augment=hyp is not None, hyp=hyp, seed=seed)
        for i in range(len(ds)):
            im, labels, _, _ = ds[i]
            assert tuple(im.shape) == (3, 128, 128), name
            bgr, boxes = sample_boxes(im, labels)
            if strict:  # nothing can be cut off: every object keeps its box
                assert len(boxes) == len(ds.labels[i]), name
            assert_boxes_on_objects(bgr, boxes, min_fill, tol, strict=strict, tight_at_border=hyp is not ROTATED)


@pytest.mark.parametrize("hyp_file,fixed", [("hyp.fixed-scale.yaml", True), ("hyp.finetune-fixed-scale.yaml", True),
                                            ("hyp.small.yaml", False)])
def test_fixed_scale_hyps_keep_every_object_at_its_size(tmp_path, hyp_file, fixed):
    """The fixed-scale hyps translate and flip but never zoom: every object inside the sample keeps its size in
    pixels (the images are 128 wide, so loading at 128 does not resize them); hyp.small's scale jitter does not."""
    img = colour_dataset(tmp_path, n=6)
    hyp = {**load_hyp(ROOT / "data" / "hyps" / hyp_file), "mosaic": 0.0}
    kept = resized = 0
    for seed in range(3):
        ds = LoadImagesAndLabels(img, 128, 4, augment=True, hyp=hyp, seed=seed)
        for i in range(len(ds)):
            _, boxes = sample_boxes(*ds[i][:2])
            sizes = {int(c): (w * 128, h * 96) for c, _, _, w, h in ds.labels[i]}
            for c, x1, y1, x2, y2 in boxes:
                if min(x1, y1) < 1 or x2 > 127 or y2 > 127:  # cut by the sample's edge
                    continue
                w, h = sizes[int(c)]
                same = abs(x2 - x1 - w) < 0.5 and abs(y2 - y1 - h) < 0.5
                kept, resized = kept + same, resized + (not same)
    assert kept + resized > 20  # enough objects inside the samples to tell
    assert (resized == 0) if fixed else (resized > 10 * kept), (kept, resized)


def test_mosaic_samples_and_close_mosaic(tmp_path):
    img = colour_dataset(tmp_path, n=6, one_class=True)  # image i holds class i only
    ds = LoadImagesAndLabels(img, 96, 4, augment=True, hyp={**HYP_DEFAULTS, "mosaic": 1.0})
    assert ds.mosaic is True
    mixed = 0
    for i in range(2 * len(ds)):
        im, labels, _, shapes = ds[i % len(ds)]
        assert tuple(im.shape) == (3, 96, 96) and shapes is None
        assert ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all() and len(labels) <= 4 * 2
        mixed += len(set(labels[:, 1].tolist())) > 1
    assert mixed >= len(ds) // 2  # most mosaics show objects of several images
    ds.mosaic = False  # what train.py does for the last --close-mosaic epochs
    for i in range(len(ds)):
        im, labels, path, shapes = ds[i]
        assert tuple(im.shape) == (3, 96, 96) and shapes is not None
        assert set(labels[:, 1].tolist()) <= {float(Path(path).stem[2:])}


def test_close_mosaic_reaches_loader_workers(tmp_path):
    img = colour_dataset(tmp_path, n=6, one_class=True)
    loader, ds = create_dataloader(img, 64, 2, 32, hyp={**HYP_DEFAULTS, "mosaic": 1.0}, augment=True, workers=2)
    assert loader.num_workers == 2
    next(iter(loader))  # an epoch under way with mosaic on
    ds.mosaic = False
    for _, labels, paths, _ in loader:  # the next epoch's workers see the change
        for j, p in enumerate(paths):
            assert set(labels[labels[:, 0] == j, 1].tolist()) <= {float(Path(p).stem[2:])}


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_gives_the_same_batches(tmp_path, workers):
    img = colour_dataset(tmp_path, n=8)
    hyp = {**HYP_DEFAULTS, "degrees": 10.0, "mixup": 0.5}

    def two_epochs(seed):
        loader, _ = create_dataloader(img, 64, 4, 32, hyp=hyp, augment=True, workers=workers, shuffle=True, seed=seed)
        assert loader.num_workers == workers
        return [[(ims, labels, paths) for ims, labels, paths, _ in loader] for _ in range(2)]

    def same(a, b):
        return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))

    a, b, c = two_epochs(0), two_epochs(0), two_epochs(1)
    assert same(a[0], b[0]) and same(a[1], b[1])
    assert not same(a[0], c[0])  # another seed: other images, other augmentations
    assert not same(a[0], a[1])  # and each epoch draws anew


def test_workers_and_epochs_draw_different_augmentations(tmp_path):
    img = colour_dataset(tmp_path, n=1)
    lb = tmp_path / "labels" / "train"
    for i in range(1, 4):  # four copies of one image: only the random draws can tell samples apart
        (img / f"im{i}.png").write_bytes((img / "im0.png").read_bytes())
        (lb / f"im{i}.txt").write_text((lb / "im0.txt").read_text())
    loader, _ = create_dataloader(img, 64, 2, 32, hyp=HYP_DEFAULTS, augment=True, workers=2)
    epochs = [[ims for ims, *_ in loader] for _ in range(2)]  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(epochs[0][0], epochs[0][1]) and not torch.equal(epochs[0][0], epochs[1][0])


def test_distributed_sampler_splits_images_between_ranks(tmp_path):
    img = colour_dataset(tmp_path, n=8)
    loaders = [create_dataloader(img, 64, 2, 32, shuffle=True, rank=r, world_size=2, workers=0)[0] for r in (0, 1)]
    orders = []
    for epoch in (0, 1):
        seen = []
        for loader in loaders:
            assert isinstance(loader.sampler, DistributedSampler)
            loader.sampler.set_epoch(epoch)
            seen.append([p for _, _, paths, _ in loader for p in paths])
        assert len(seen[0]) == len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])
        orders.append(seen[0] + seen[1])
    assert orders[0] != orders[1]  # set_epoch reshuffles
    single = create_dataloader(img, 64, 2, 32, rank=0, workers=0)[0]  # no process group: one replica
    assert len(single.sampler) == 8


def test_label_cache_is_reused_until_a_file_changes(tmp_path, log_lines, monkeypatch):
    img = colour_dataset(tmp_path, n=4)
    calls = []
    real = label_cache.verify_dataset
    monkeypatch.setattr(label_cache, "verify_dataset", lambda *a: calls.append(1) or real(*a))
    cache = tmp_path / "labels" / "train.cache"
    ds1 = LoadImagesAndLabels(img, 64, nc=7)
    assert cache.is_file() and len(calls) == 1 and any("New cache created" in x for x in log_lines)
    assert oct(cache.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    ds2 = LoadImagesAndLabels(img, 64, nc=7)
    assert len(calls) == 1 and any("cache found: 4 images" in x for x in log_lines)
    assert ds2.im_files == ds1.im_files and (ds2.shapes == ds1.shapes).all()
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(ds1.labels, ds2.labels))
    lb = tmp_path / "labels" / "train" / "im0.txt"
    st = lb.stat()
    os.utime(lb, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: rescan
    LoadImagesAndLabels(img, 64, nc=7)
    assert len(calls) == 2
    lb.write_text(lb.read_text().splitlines()[0] + "\n")  # edited: rescan, and the new labels are used
    assert len(LoadImagesAndLabels(img, 64, nc=7).labels[0]) == 1 and len(calls) == 3
    LoadImagesAndLabels(img, 64, nc=None)  # another class count decides validity anew
    assert len(calls) == 4
    cache.write_bytes(b"garbage")
    LoadImagesAndLabels(img, 64, nc=None)
    assert len(calls) == 5 and cache.read_bytes() != b"garbage"


def test_a_long_list_of_files_is_logged_by_its_count(tmp_path, log_lines):
    """prune.py builds its calibration and held-out splits from file lists: the scan line names how many, not all."""
    img = colour_dataset(tmp_path, n=5)
    files = sorted(str(f) for f in Path(img).glob("*.png"))
    assert len(LoadImagesAndLabels(files, 64, nc=7).im_files) == 5
    line = next(x for x in log_lines if "Scanned" in x)
    assert line.startswith(f"Scanned 5 paths ({files[0]}, ...): 5 images") and files[1] not in line
    LoadImagesAndLabels(files[:2], 64, nc=7)  # a short list (e.g. a yaml's train: [dir1, dir2]) is named in full
    assert str(files[:2]) in log_lines[-1]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_label_cache_write_failures_only_warn(tmp_path, log_lines, monkeypatch):
    img = colour_dataset(tmp_path, n=2)
    labels_root = tmp_path / "labels"

    def fail(f, **_):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(np, "savez", fail)
        LoadImagesAndLabels(img, 64)
    assert any("cannot write label cache" in x and "No space" in x for x in log_lines)
    assert sorted(p.name for p in labels_root.iterdir()) == ["train"]  # neither the cache nor a temp file
    labels_root.chmod(0o555)
    try:
        assert len(LoadImagesAndLabels(img, 64)) == 2
    finally:
        labels_root.chmod(0o755)
    assert any("read-only, labels not cached" in x for x in log_lines)
    assert sorted(p.name for p in labels_root.iterdir()) == ["train"]


@pytest.mark.parametrize("augment", [False, True])
def test_image_cache_gives_identical_samples(tmp_path, log_lines, augment):
    img = colour_dataset(tmp_path, n=4, size=(96, 160))  # 160 -> 64: really resized
    before = {p.name: p.stat().st_mtime_ns for p in img.iterdir()}
    reference, npy_times = None, {}
    for cache in (None, "ram", "disk", "disk"):  # the second disk run reads the .npy files the first wrote
        ds = LoadImagesAndLabels(img, 64, 2, augment=augment, hyp={**HYP_DEFAULTS, "degrees": 5.0}, cache=cache)
        assert ds.cache == cache
        samples = [ds[i] for i in range(len(ds))]
        reference = reference or samples
        for (im, lb, path, shapes), (im0, lb0, path0, shapes0) in zip(samples, reference):
            assert torch.equal(im, im0) and torch.equal(lb, lb0) and path == path0 and shapes == shapes0, cache
        if cache == "ram":  # sampling must not have altered the cached images
            assert all(np.array_equal(ds.ims[i][0], ds._read_resized(i)[0]) for i in range(len(ds)))
        if cache == "disk":
            times = {p.name: p.stat().st_mtime_ns for p in img.glob("*.npy")}
            assert not npy_times or times == npy_times  # written once, then only read
            npy_times = times
    assert sorted(npy_times) == sorted(f"{name}.64.npy" for name in before)
    assert {p.name: p.stat().st_mtime_ns for p in img.iterdir() if p.suffix != ".npy"} == before
    assert any("Caching images" in x and "GB ram" in x for x in log_lines)
    assert any("Caching images" in x and "GB disk" in x for x in log_lines)


def test_rect_training_keeps_batch_shapes_and_order(tmp_path, log_lines):
    img = colour_dataset(tmp_path, n=4, size=(64, 128))
    loader, ds = create_dataloader(img, 64, 2, 32, hyp=HYP_DEFAULTS, augment=True, rect=True, shuffle=True,
                                   workers=0)
    assert ds.mosaic is False and any("incompatible with shuffle" in x for x in log_lines)
    paths = []
    for k, (ims, labels, batch_paths, _) in enumerate(loader):
        assert tuple(ims.shape[2:]) == tuple(ds.batch_shapes[k])
        assert ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all()
        paths += batch_paths
    assert paths == ds.im_files
