"""Plots written to disk by training and validation (never shown: the Agg backend needs no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

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
