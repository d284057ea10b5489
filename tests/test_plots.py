"""Training plots: results.png from results.csv (extra columns, one row, NaN) and labels.jpg (0 and many labels)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from utils.errors import UserError
from utils.plots import RESULTS_ORDER, plot_labels, plot_results, results_figure

LR_COLS = ("x/lr0", "x/lr1", "x/lr2")


def _write_csv(path: Path, rows: int, extra: tuple[str, ...] = ()) -> Path:
    """A results.csv laid out as train.py writes it: names padded with leading spaces."""
    cols = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
            "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss", *LR_COLS,
            *extra]
    rng = np.random.default_rng(0)
    lines = [",".join(f"{c:>20s}" for c in cols)]
    for e in range(rows):
        lines.append(",".join(f"{v:>20.5g}" for v in [e, *rng.random(len(cols) - 1)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_image(path: Path, min_side: int = 200) -> None:
    im = cv2.imread(str(path))
    assert im is not None, path
    assert min(im.shape[:2]) >= min_side and im.std() > 1  # not a blank page


def test_plot_results_standard_and_extra_columns(tmp_path):
    csv = _write_csv(tmp_path / "results.csv", rows=12, extra=("sparsity/gamma_mean", "distill/loss"))
    out = plot_results(csv)
    assert out == tmp_path / "results.png"
    _assert_image(out)
    data = pd.read_csv(csv, skipinitialspace=True)
    data.columns = [c.strip() for c in data.columns]
    fig = results_figure(data)
    assert len(fig.axes) == len(data.columns) - 1 == 15  # every non-epoch column, epoch being the x axis
    assert [ax.get_title() for ax in fig.axes[:10]] == list(RESULTS_ORDER)  # upstream's 2x5 layout first
    assert [ax.get_title() for ax in fig.axes[10:]] == [*LR_COLS, "sparsity/gamma_mean", "distill/loss"]


def test_plot_results_single_row_and_nan(tmp_path):
    _assert_image(plot_results(_write_csv(tmp_path / "results.csv", rows=1)))
    # a hook's column that is NaN in early epochs, an all-NaN column, a NaN metric: points skipped, no crash
    (tmp_path / "b").mkdir()
    csv = _write_csv(tmp_path / "b" / "results.csv", rows=5, extra=("extra/a", "extra/b"))
    data = pd.read_csv(csv, skipinitialspace=True)
    data.columns = [c.strip() for c in data.columns]
    data.loc[:2, "extra/a"] = np.nan
    data["extra/b"] = np.nan
    data.loc[1, "metrics/recall"] = np.nan
    data.to_csv(csv, index=False)
    _assert_image(plot_results(csv))


def test_plot_results_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        plot_results(tmp_path / "results.csv")


def test_plot_labels_empty(tmp_path):
    out = plot_labels(np.zeros((0, 5)), {0: "a"}, tmp_path)
    assert out == tmp_path / "labels.jpg"
    _assert_image(out)


@pytest.mark.parametrize("n,nc", [(1000, 3), (10_000, 40)])
def test_plot_labels_many(tmp_path, n, nc):
    rng = np.random.default_rng(0)
    wh = rng.uniform(0.02, 0.5, (n, 2))
    labels = np.column_stack([rng.integers(0, nc, n), rng.uniform(0.1, 0.9, (n, 2)), wh])
    names = {i: f"class{i}" for i in range(nc)}
    t = time.perf_counter()
    out = plot_labels(labels, names, tmp_path / "sub")
    assert time.perf_counter() - t < 3.0
    _assert_image(out)
