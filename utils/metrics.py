"""Detection metrics: matching, AP per class, confusion matrix, fitness.

Matching, P/R at the best-F1 confidence and the per-class bookkeeping are YOLOv5's, so val.py reproduces
upstream's P and R exactly; AP integrates the precision envelope as COCOeval does (see ``compute_ap``), which
tests/test_metrics.py checks against pycocotools on constructed cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np
import torch

from utils.boxes import box_iou

Array = Union[torch.Tensor, np.ndarray]


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _greedy_pairs(iou: torch.Tensor, ok: torch.Tensor) -> np.ndarray:
    """One-to-one (label, detection, iou) rows among allowed pairs, taken greedily by IoU.

    Each detection keeps its highest-IoU label; then each label keeps its lowest-index detection among those
    (as upstream YOLOv5, whose detections come conf-sorted from NMS, so that is the most confident one).
    """
    li, di = torch.where(ok)
    matches = torch.stack((li.double(), di.double(), iou[li, di].double()), 1).cpu().numpy()
    matches = matches[matches[:, 2].argsort()[::-1]]
    matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
    return matches[np.unique(matches[:, 0], return_index=True)[1]]


def match_predictions(detections: Array, labels: Array, iouv: Array) -> Array:
    """The "correct" matrix: (n, 6) xyxy,conf,cls detections vs (m, 5) cls,xyxy labels -> (n, len(iouv)) bool.

    A detection is correct at threshold t if it is paired one-to-one (see ``_greedy_pairs``) with a label of
    its class at IoU >= t. Returns a torch tensor on the detections' device if given torch, else numpy.
    """
    as_torch = isinstance(detections, torch.Tensor)
    det = torch.as_tensor(detections)
    lab = torch.as_tensor(labels, device=det.device)
    thresholds = _numpy(iouv)
    correct = np.zeros((det.shape[0], len(thresholds)), dtype=bool)
    if det.shape[0] and lab.shape[0]:
        iou = box_iou(lab[:, 1:].float(), det[:, :4].float())
        same_class = lab[:, 0:1] == det[:, 5]
        for k, t in enumerate(thresholds):
            matches = _greedy_pairs(iou, (iou >= float(t)) & same_class)
            correct[matches[:, 1].astype(int), k] = True
    return torch.from_numpy(correct).to(det.device) if as_torch else correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one recall/precision curve as COCOeval computes it: the precision envelope (best precision at this or
    any higher recall) sampled at the 101 recall points 0, 0.01, ..., 1; points beyond the last recall count 0.

    Upstream YOLOv5 instead closes the curve with a line to (recall 1, precision 0) and integrates trapezoidally,
    which credits recall never reached (one of two objects found: 0.75 there, 51/101 here). On val.py's output
    (conf 0.001) the two agree within 0.003 on the reference checkpoints.
    Returns (ap, envelope precision, recall), both with sentinel end points, for plotting.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    if not len(recall):
        return 0.0, mpre, mrec
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")  # first point reaching each recall level
    env = mpre[1:-1]
    ap = float(np.where(idx < len(recall), env[np.minimum(idx, len(recall) - 1)], 0.0).mean())
    return ap, mpre, mrec


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter of fractional width ``f``, padded with the end values so the length is kept."""
    nf = round(len(y) * f * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


class APResult(NamedTuple):
    """Per-class results for the classes that have targets, ordered as ``classes``.

    p, r, f1, tp, fp are taken at the confidence maximising the smoothed mean F1; ap is (nc, n_iou).
    Unpacks like upstream's tuple: ``tp, fp, p, r, f1, ap, classes = ap_per_class(...)``.
    """

    tp: np.ndarray
    fp: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    classes: np.ndarray

    @property
    def ap50(self) -> np.ndarray:
        return self.ap[:, 0]

    @property
    def ap_mean(self) -> np.ndarray:
        """AP averaged over the IoU thresholds (AP@0.5:0.95), per class."""
        return self.ap.mean(1)

    def mean_results(self) -> tuple[float, float, float, float]:
        """(P, R, mAP50, mAP50-95) averaged over classes; zeros when there are no classes."""
        if not len(self.classes):
            return 0.0, 0.0, 0.0, 0.0
        return float(self.p.mean()), float(self.r.mean()), float(self.ap50.mean()), float(self.ap.mean())


def _class_curves(tp: np.ndarray, conf: np.ndarray, n_l: int, px: np.ndarray, eps: float):
    """Recall and precision vs confidence at ``px``, AP per threshold and the PR curve for one class."""
    tpc = tp.cumsum(0)
    fpc = (1 - tp).cumsum(0)
    recall = tpc / (n_l + eps)
    precision = tpc / (tpc + fpc)
    # conf is descending, np.interp needs ascending x: hence the negations
    r_curve = np.interp(-px, -conf, recall[:, 0], left=0)
    p_curve = np.interp(-px, -conf, precision[:, 0], left=1)
    ap = np.zeros(tp.shape[1])
    for j in range(tp.shape[1]):
        ap[j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
        if j == 0:
            pr_curve = np.interp(px, mrec, mpre)
    return r_curve, p_curve, ap, pr_curve


def ap_per_class(
    tp: Array,
    conf: Array,
    pred_cls: Array,
    target_cls: Array,
    plot: bool = False,
    save_dir: Path = Path("."),
    names: dict | Sequence[str] = (),
    eps: float = 1e-16,
    prefix: str = "",
) -> APResult:
    """AP per class from (n, n_iou) correct flags, confidences and classes of all predictions of a dataset.

    ``target_cls`` lists the class of every ground-truth box. With ``plot`` writes {prefix}PR_curve.png,
    F1_curve.png, P_curve.png and R_curve.png into ``save_dir``.
    """
    tp, conf, pred_cls, target_cls = (_numpy(a) for a in (tp, conf, pred_cls, target_cls))
    tp = tp.astype(float).reshape(len(conf), -1)
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, nt = np.unique(target_cls, return_counts=True)
    nc = classes.shape[0]
    px = np.linspace(0, 1, 1000)
    ap, p, r, py = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(classes):
        i = pred_cls == c
        if i.sum() == 0 or nt[ci] == 0:
            continue
        r[ci], p[ci], ap[ci], py[ci] = _class_curves(tp[i], conf[i], nt[ci], px, eps)
    f1 = 2 * p * r / (p + r + eps)
    if plot:
        _plot_curves(px, py, ap, p, r, f1, Path(save_dir), _class_names(names, classes), prefix)
    best = smooth(f1.mean(0), 0.1).argmax() if nc else 0
    p, r, f1 = p[:, best], r[:, best], f1[:, best]
    tp = (r * nt).round()
    fp = (tp / (p + eps) - tp).round()
    return APResult(tp, fp, p, r, f1, ap, classes.astype(int))


def _class_names(names: dict | Sequence[str], classes: np.ndarray) -> list[str]:
    lookup = names if isinstance(names, dict) else dict(enumerate(names))
    return [str(lookup.get(int(c), f"class{int(c)}")) for c in classes]


def _plot_curves(px, py, ap, p, r, f1, save_dir: Path, names: list[str], prefix: str) -> None:
    from utils.plots import plot_mc_curve, plot_pr_curve  # matplotlib only when plotting

    plot_pr_curve(px, py, ap, save_dir / f"{prefix}PR_curve.png", names)
    plot_mc_curve(px, f1, save_dir / f"{prefix}F1_curve.png", names, ylabel="F1")
    plot_mc_curve(px, p, save_dir / f"{prefix}P_curve.png", names, ylabel="Precision")
    plot_mc_curve(px, r, save_dir / f"{prefix}R_curve.png", names, ylabel="Recall")


class ConfusionMatrix:
    """Detection confusion matrix indexed [predicted class, true class]; index ``nc`` is background."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: (n, 6) xyxy,conf,cls detections (or None) vs (m, 5) cls,xyxy labels.

        Boxes are paired class-agnostically at IoU > iou_thres (greedy by IoU, one-to-one), so a pair with
        different classes counts as a confusion; unpaired labels are missed (background column), unpaired
        detections are false alarms (background row). ``labels`` may be just the (m,) classes when
        ``detections`` is None.
        """
        gt_classes = (labels[:, 0] if labels.ndim == 2 else labels).int().tolist()
        if detections is None:
            for gc in gt_classes:
                self.matrix[self.nc, gc] += 1
            return
        detections = detections[detections[:, 4] > self.conf]
        det_classes = detections[:, 5].int().tolist()
        matched_det = set()
        if len(gt_classes) and len(det_classes):
            iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())
            for li, di, _ in _greedy_pairs(iou, iou > self.iou_thres).astype(int):
                self.matrix[det_classes[di], gt_classes[li]] += 1
                matched_det.add(di)
                gt_classes[li] = -1  # mark as matched
        for gc in gt_classes:
            if gc >= 0:
                self.matrix[self.nc, gc] += 1
        for di, dc in enumerate(det_classes):
            if di not in matched_det:
                self.matrix[dc, self.nc] += 1

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true positives (diagonal) and false positives (rest of each predicted row)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def plot(self, save_dir: Path = Path("."), names: dict | Sequence[str] = (), normalize: bool = True) -> None:
        """Write confusion_matrix.png into ``save_dir``."""
        from utils.plots import plot_confusion_matrix

        labels = list(names.values()) if isinstance(names, dict) else list(names)
        plot_confusion_matrix(self.matrix, Path(save_dir) / "confusion_matrix.png", labels, normalize)


def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness from (..., 4) rows [P, R, mAP50, mAP50-95]: 0.1 * mAP50 + 0.9 * mAP50-95."""
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x)[..., :4] * w).sum(-1)
