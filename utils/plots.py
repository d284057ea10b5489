"""Plots written to disk by training and validation (never shown: the Agg backend needs no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

from utils.annotate import class_color  # noqa: E402
from utils.errors import UserError  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

MAX_CLASS_LINES = 21  # above this many classes, per-class legends are unreadable


def plot_pr_curve(
    px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_path: Path, names: Sequence[str] = ()
) -> None:
    """Precision-recall curve: ``py`` (nc, len(px)) precision at recalls ``px``, ``ap`` (nc, >=1) AP@0.5 first."""
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    if 0 < len(names) < MAX_CLASS_LINES:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f"{names[i]} {ap[i, 0]:.3f}")
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    ax.plot(px, py.mean(0), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title("Precision-Recall Curve")
    fig.savefig(save_path, dpi=250)
    plt.close(fig)


def plot_mc_curve(
    px: np.ndarray,
    py: np.ndarray,
    save_path: Path,
    names: Sequence[str] = (),
    xlabel: str = "Confidence",
    ylabel: str = "Metric",
) -> None:
    """Metric-vs-confidence curve: ``py`` (nc, len(px)); the legend gives the mean curve's maximum."""
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    if 0 < len(names) < MAX_CLASS_LINES:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=names[i])
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    mean = py.mean(0)
    best = int(mean.argmax())
    ax.plot(px, mean, linewidth=3, color="blue", label=f"all classes {mean[best]:.2f} at {px[best]:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(f"{ylabel}-Confidence Curve")
    fig.savefig(save_path, dpi=250)
    plt.close(fig)


def plot_confusion_matrix(
    matrix: np.ndarray, save_path: Path, names: Sequence[str] = (), normalize: bool = True
) -> None:
    """Heatmap of an (nc+1, nc+1) matrix indexed [predicted, true]; the last row/column is background."""
    import seaborn as sn  # slow to import, and only this plot needs it

    nc = matrix.shape[0] - 1
    array = matrix / (matrix.sum(0, keepdims=True) + 1e-9) if normalize else matrix.astype(float)
    array = np.where(array < 0.005, np.nan, array)  # blank near-empty cells instead of printing 0.00
    ticks = list(names) + ["background"] if 0 < len(names) == nc and nc < 99 else "auto"
    fig, ax = plt.subplots(1, 1, figsize=(12, 9), tight_layout=True)
    sn.set_theme(font_scale=1.0 if nc < 50 else 0.8)
    sn.heatmap(
        array,
        ax=ax,
        annot=nc < 30,
        annot_kws={"size": 8},
        cmap="Blues",
        fmt=".2f" if normalize else ".0f",
        square=True,
        vmin=0.0,
        xticklabels=ticks,
        yticklabels=ticks,
    ).set_facecolor((1, 1, 1))
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    fig.savefig(save_path, dpi=250)
    plt.close(fig)


# results.csv columns in upstream's 2x5 results.png order: train losses, P, R; then val losses, mAPs
RESULTS_ORDER = (
    "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
    "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
)
RESULTS_COLS = 5  # subplots per row


def results_figure(data: pd.DataFrame) -> plt.Figure:
    """One subplot per non-epoch column of a results table: the standard ten first (2x5), then any others
    (learning rates, columns added by hooks) in further rows. NaN values are skipped, not plotted."""
    import pandas as pd
    from scipy.ndimage import gaussian_filter1d

    cols = [c for c in RESULTS_ORDER if c in data.columns]
    cols += [c for c in data.columns if c not in RESULTS_ORDER and c != "epoch"]
    rows = max(1, math.ceil(len(cols) / RESULTS_COLS))
    fig = plt.figure(figsize=(12, 3 * rows), tight_layout=True)
    x = data["epoch"].to_numpy(float) if "epoch" in data.columns else np.arange(len(data), dtype=float)
    for i, c in enumerate(cols):
        ax = fig.add_subplot(rows, RESULTS_COLS, i + 1)
        y = pd.to_numeric(data[c], errors="coerce").to_numpy(float)  # text a hook may log becomes NaN
        ok = np.isfinite(x) & np.isfinite(y)
        ax.plot(x[ok], y[ok], marker=".", label="results", linewidth=2, markersize=8)
        if ok.sum() > 2:  # a smoothed trend says nothing over one or two points
            ax.plot(x[ok], gaussian_filter1d(y[ok], sigma=3), ":", label="smooth", linewidth=2)
        if not ok.any():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(c, fontsize=12)
    if cols:
        fig.axes[0].legend()
    else:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no results columns", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
    return fig


def plot_results(csv_file: Path) -> Path:
    """Plot every column of train.py's results.csv against epoch; write results.png beside it and return its path."""
    import pandas as pd  # slow to import, and only this plot needs it

    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise UserError(f"results file not found: {csv_file}")
    data = pd.read_csv(csv_file, skipinitialspace=True)
    data.columns = [str(c).strip() for c in data.columns]  # train.py pads names to align the columns
    fig = results_figure(data)
    out = csv_file.with_name("results.png")
    fig.savefig(out, dpi=200)
    plt.close(fig)
    return out


def plot_labels(labels: np.ndarray, names: dict[int, str], save_dir: Path) -> Path:
    """labels.jpg in save_dir: instances per class, box sizes drawn centred, centres x-y and sizes w-h histograms.

    `labels` (n, 5) rows of class, cx, cy, w, h normalised to 0-1.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    names = names if isinstance(names, dict) else dict(enumerate(names))
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    out = Path(save_dir) / "labels.jpg"
    fig, axs = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    if not len(labels):
        for ax in axs.flat:
            ax.axis("off")
        fig.text(0.5, 0.5, "no labels", ha="center", va="center", fontsize=24)
    else:
        c = labels[:, 0].astype(int)
        nc = max(len(names), int(c.max()) + 1)
        ax = axs[0, 0]
        ax.bar(range(nc), np.bincount(c, minlength=nc), color=[_rgb(i) for i in range(nc)])
        ax.set_ylabel("instances")
        ax.set_title(f"{len(labels)} labels")
        if nc <= 30:
            ax.set_xticks(range(nc))
            ax.set_xticklabels([names.get(i, str(i)) for i in range(nc)], rotation=90, fontsize=10)
        else:
            ax.set_xlabel("classes")
        axs[0, 1].imshow(_boxes_canvas(labels))
        axs[0, 1].set_title("box sizes (a sample)")
        axs[0, 1].axis("off")
        for ax, (i, j), (xl, yl) in zip(axs[1], ((1, 2), (3, 4)), (("x", "y"), ("width", "height"))):
            ax.hist2d(labels[:, i], labels[:, j], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
    fig.savefig(out, dpi=200)
    plt.close(fig)
    return out


def _rgb(i: int) -> tuple[float, float, float]:
    return tuple(v / 255 for v in class_color(i, bgr=False))


def _boxes_canvas(labels: np.ndarray, n: int = 500, size: int = 1000) -> np.ndarray:
    """Up to n boxes (an even sample, so the picture is deterministic) drawn around the centre of a white canvas."""
    im = np.full((size, size, 3), 255, dtype=np.uint8)
    for cls, _, _, w, h in labels[:: max(1, len(labels) // n)][:n]:
        p1 = int(size * (0.5 - w / 2)), int(size * (0.5 - h / 2))
        p2 = int(size * (0.5 + w / 2)), int(size * (0.5 + h / 2))
        cv2.rectangle(im, p1, p2, class_color(int(cls), bgr=False), 1, cv2.LINE_AA)
    return im
