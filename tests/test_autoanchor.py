"""AutoAnchor: k-means + evolution recovers known clusters; BPR equals a hand count; bad anchors get replaced."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import torch

from models.yolo import DetectionModel
from utils.autoanchor import anchor_metrics, check_anchors, kmean_anchors, label_wh

# yolov5n.yaml's anchors (pixels), smallest first
CENTRES = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]],
                   dtype=np.float64)


def _clustered_wh(n_per: int = 100, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c * np.exp(rng.normal(0, noise, (n_per, 2))) for c in CENTRES])


def _dataset(wh_px: np.ndarray, size: int = 640, per_image: int = 10) -> SimpleNamespace:
    """Square size x size images holding the given pixel sizes as labels (class 0, centred)."""
    chunks = [wh_px[i:i + per_image] for i in range(0, len(wh_px), per_image)]
    labels = [np.column_stack([np.zeros(len(c)), np.full((len(c), 2), 0.5), c / size]) for c in chunks]
    return SimpleNamespace(shapes=np.full((len(labels), 2), float(size)), labels=labels)


def _detect(model: DetectionModel):
    return model.model[-1]


def test_kmean_anchors_recovers_clusters():
    wh = _clustered_wh()
    k = kmean_anchors(wh, n=9, gen=200, verbose=False)
    assert k.shape == (9, 2)
    assert (np.diff(k.prod(1)) >= 0).all()  # sorted by area
    rel = np.abs(k[None] / CENTRES[:, None] - 1).max(2)  # (true centre, found anchor): worse side's error
    assert (rel.min(1) < 0.15).all(), rel.min(1)
    np.testing.assert_array_equal(k, kmean_anchors(wh, n=9, gen=200, verbose=False))  # same seed, same anchors


def test_kmean_anchors_few_labels_fall_back_to_random_start():
    k = kmean_anchors(np.array([[20.0, 30.0], [40.0, 50.0]]), n=9, gen=50, verbose=False)
    assert k.shape == (9, 2) and np.isfinite(k).all() and (k >= 2.0).all()


def test_bpr_equals_hand_count(log_lines):
    # against yolov5n's anchors (thr 4): 20x20 .. 300x300 fit some anchor by far; 2 px wide boxes fit none
    # (every anchor is >= 10 px wide) and 600x3 neither: both stay misfits under the 0.9-1.1 scale jitter
    good = np.array([[20, 20], [40, 40], [60, 100], [100, 60], [150, 150], [300, 300]], dtype=np.float64)
    bad = np.array([[2, 300], [600, 3]], dtype=np.float64)
    ds = _dataset(np.concatenate([good, bad]), per_image=3)
    model = DetectionModel("yolov5n.yaml", nc=1)
    check_anchors(ds, model, thr=4.0, imgsz=640)
    line = next(x for x in log_lines if "Best Possible Recall" in x)
    assert re.search(r"AutoAnchor: \d+\.\d\d anchors/target, 0\.750 Best Possible Recall \(BPR\)", line), line
    # the metric itself, without jitter: 3 of 4 fit; 10x10 fits only anchors within 4x on both sides
    bpr, aat = anchor_metrics(np.array([[10, 10], [100, 100], [300, 300], [2, 2]], np.float32), CENTRES, thr=4.0)
    assert bpr == 0.75
    fits = [(np.maximum(w / CENTRES, CENTRES / w).max(1) < 4).sum() for w in ([10, 10], [100, 100], [300, 300])]
    assert aat == sum(fits) / 4


def test_terrible_anchors_are_replaced():
    model = DetectionModel("yolov5n.yaml", nc=2)
    d = _detect(model)
    with torch.no_grad():
        d.anchors[:] = 1 / d.stride.view(-1, 1, 1)  # every anchor 1x1 px
    x = torch.zeros(1, 3, 128, 128)
    model.eval()(x)  # caches eval grids built from the old anchors
    ds = _dataset(_clustered_wh(n_per=40))
    assert check_anchors(ds, model, thr=4.0, imgsz=640)

    px = (d.anchors * d.stride.view(-1, 1, 1)).view(-1, 2).numpy()
    bpr, _ = anchor_metrics(label_wh(ds, 640), px, thr=4.0)
    assert bpr >= 0.98
    area = d.anchors.prod(-1) * d.stride.view(-1, 1) ** 2  # (nl, na) in px^2
    assert (area.mean(1).diff() > 0).all()  # larger anchors on coarser levels, as strides grow
    assert (area.flatten().diff() >= 0).all()
    with torch.no_grad():
        pred, _ = model.eval()(x)
    assert pred.shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4), 7) and torch.isfinite(pred).all()
    assert torch.allclose(d.anchor_grid[0][0, :, 0, 0], d.anchors[0] * d.stride[0])  # grids use the new anchors


def test_good_fit_leaves_anchors_untouched(log_lines):
    model = DetectionModel("yolov5n.yaml", nc=2)
    before = _detect(model).anchors.clone()
    assert not check_anchors(_dataset(_clustered_wh(n_per=20)), model)
    assert torch.equal(_detect(model).anchors, before)
    assert any("good fit" in x for x in log_lines)


def test_no_labels_warns(log_lines):
    model = DetectionModel("yolov5n.yaml", nc=2)
    before = _detect(model).anchors.clone()
    empty = SimpleNamespace(shapes=np.full((3, 2), 640.0), labels=[np.zeros((0, 5))] * 3)
    assert not check_anchors(empty, model)
    assert not check_anchors(SimpleNamespace(shapes=np.zeros((0, 2)), labels=[]), model)
    assert torch.equal(_detect(model).anchors, before)
    assert sum("no labels" in x for x in log_lines) == 2
