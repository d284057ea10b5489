"""AutoAnchor: check how well the model's anchors fit a dataset's boxes; evolve better ones when they do not.

A label "fits" an anchor when neither side differs by more than a factor `thr` (4.0, the loss's `anchor_t`):
the same rule the loss uses to assign targets, so the Best Possible Recall (BPR) is the share of labels that
can be trained at all.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from models.yolo import check_anchor_order
from utils.errors import UserError
from utils.log import LOGGER, colorstr

PREFIX = colorstr("AutoAnchor: ")
BPR_OK = 0.98  # upstream's threshold: below it, anchors are re-computed


def label_wh(dataset, imgsz: int = 640, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n, 2) label widths and heights in pixels once the image's long side is `imgsz`.

    With `rng`, each image is also scaled by a random 0.9-1.1, like the scale augmentation training sees.
    """
    shapes = np.asarray(dataset.shapes, dtype=np.float64).reshape(-1, 2)
    labels = list(dataset.labels)
    if not len(labels) or not any(len(x) for x in labels):
        return np.zeros((0, 2), dtype=np.float32)
    shapes = imgsz * shapes / shapes.max(1, keepdims=True)
    if rng is not None:
        shapes = shapes * rng.uniform(0.9, 1.1, size=(len(shapes), 1))
    wh = [np.asarray(x, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, x in zip(shapes, labels)]
    return np.concatenate(wh).astype(np.float32)


def ratio_metric(wh: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label and anchor, min(r, 1/r) of the worse side (1 = identical); and per label the best anchor's."""
    r = wh[:, None] / anchors[None]
    x = np.minimum(r, 1 / r).min(2)
    return x, x.max(1)


def anchor_metrics(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """(BPR, AAT): share of labels some anchor fits, and mean number of anchors fitting each label."""
    x, best = ratio_metric(wh, np.asarray(anchors, dtype=np.float32).reshape(-1, 2))
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def _fitness(wh: np.ndarray, k: np.ndarray, thr: float) -> float:
    _, best = ratio_metric(wh, k)
    return float((best * (best > 1 / thr)).mean())  # labels no anchor fits count 0


def _summary(wh: np.ndarray, k: np.ndarray, thr: float) -> str:
    bpr, aat = anchor_metrics(wh, k, thr)
    sizes = ", ".join(f"{round(w)},{round(h)}" for w, h in k)
    return f"{PREFIX}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors/target, n={len(k)}: {sizes}"


def _kmeans_init(wh: np.ndarray, n: int, img_size: int, rng: np.random.Generator) -> np.ndarray:
    """k-means on whitened sizes (both axes weigh alike); random sizes when there are too few distinct labels."""
    from scipy.cluster.vq import kmeans  # slow to import, and only AutoAnchor needs it

    if n <= len(wh):
        s = wh.std(0)
        s[s == 0] = 1.0
        k = kmeans(wh / s, n, iter=30, seed=int(rng.integers(2**31)))[0] * s
        if len(k) == n:  # scipy drops empty clusters, e.g. when labels repeat
            return k
    LOGGER.warning(f"{PREFIX}WARNING: k-means could not find {n} clusters in {len(wh)} labels, using a random start")
    return np.sort(rng.random(n * 2)).reshape(n, 2) * img_size


def kmean_anchors(
    wh: np.ndarray,
    n: int = 9,
    img_size: int = 640,
    thr: float = 4.0,
    gen: int = 1000,
    seed: int = 0,
    verbose: bool = True,
) -> np.ndarray:
    """`n` anchors (n, 2) in pixels, sorted by area, fitted to label sizes `wh` (pixels at `img_size`).

    k-means gives a start; a genetic search then mutates all anchors at once and keeps a mutant only when the
    fitness (mean best-anchor ratio metric, 0 for labels no anchor fits within `thr`) improves.
    """
    wh0 = np.asarray(wh, dtype=np.float32).reshape(-1, 2)
    if not len(wh0):
        raise UserError("AutoAnchor: no labels to compute anchors from")
    rng = np.random.default_rng(seed)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        LOGGER.warning(f"{PREFIX}WARNING: extremely small objects: {tiny} of {len(wh0)} labels are < 3 pixels in size")
    wh = wh0[(wh0 >= 2.0).any(1)]  # a label under 2 px on both sides is noise to fit, not a shape
    if not len(wh):
        wh = wh0
    k = _kmeans_init(wh, n, img_size, rng)
    k = k[np.argsort(k.prod(1))]
    if verbose:
        LOGGER.info(_summary(wh0, k, thr))

    f, mp, sigma = _fitness(wh, k, thr), 0.9, 0.1
    pbar = tqdm(range(gen), desc=f"{PREFIX}Evolving anchors with Genetic Algorithm: fitness = {f:.4f}")
    for _ in pbar:
        v = np.ones(k.shape)
        while (v == 1).all():  # a mutation must change something
            v = ((rng.random(k.shape) < mp) * rng.random() * rng.standard_normal(k.shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = _fitness(wh, kg, thr)
        if fg > f:
            f, k = fg, kg
            pbar.desc = f"{PREFIX}Evolving anchors with Genetic Algorithm: fitness = {f:.4f}"
    pbar.close()
    k = k[np.argsort(k.prod(1))].astype(np.float32)
    if verbose:
        LOGGER.info(_summary(wh0, k, thr))
    return k


def check_anchors(dataset, model, thr: float = 4.0, imgsz: int = 640) -> bool:
    """Log the anchors' fit to `dataset`; when BPR < 0.98, evolve new ones and keep them if their BPR is higher.

    Returns True when the model's anchors were replaced.
    """
    m = (model.module if hasattr(model, "module") else model).model[-1]  # Detect, also under DDP
    wh = label_wh(dataset, imgsz, rng=np.random.default_rng(0))
    if not len(wh):
        LOGGER.warning(f"{PREFIX}WARNING: no labels in the dataset, skipping the anchor check")
        return False
    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    anchors = (m.anchors * stride).detach().cpu().numpy().reshape(-1, 2)
    bpr, aat = anchor_metrics(wh, anchors, thr)
    s = f"{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr >= BPR_OK:
        LOGGER.info(f"{s}Current anchors are a good fit to dataset")
        return False
    LOGGER.info(f"{s}Anchors are a poor fit to dataset, attempting to improve...")
    new = kmean_anchors(wh, n=m.anchors.numel() // 2, img_size=imgsz, thr=thr, gen=1000, verbose=False)
    new_bpr, new_aat = anchor_metrics(wh, new, thr)
    if new_bpr <= bpr:
        LOGGER.info(f"{PREFIX}Done (new BPR {new_bpr:.3f} is not higher: keeping the original anchors)")
        return False
    with torch.no_grad():
        # sorted by area, so the smallest anchors go to the finest level; check_anchor_order flips them if
        # this model's strides run the other way
        m.anchors[:] = torch.from_numpy(new).to(m.anchors).view_as(m.anchors)
        check_anchor_order(m)
        m.anchors /= stride
    # eval-mode grids cache anchors in pixels: rebuild them on the next forward
    m.grid = [torch.empty(0) for _ in range(m.nl)]
    m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
    sizes = ", ".join(f"{round(w)},{round(h)}" for w, h in new)
    LOGGER.info(f"{PREFIX}{new_aat:.2f} anchors/target, {new_bpr:.3f} BPR with new anchors {sizes}")
    LOGGER.info(f"{PREFIX}Done (optional: put these anchors in the model *.yaml to use them in the future)")
    return True
