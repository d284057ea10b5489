"""Training plots: results.png from results.csv (extra columns, one row, NaN) and labels.jpg (0 and many labels)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import utils.plots
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


def _assert_image(path: Path, shape: tuple[int, int]) -> None:
    """A readable image of the figure's size (figsize x dpi, no tight bbox) that is not a blank page (uniform: std 0
    plus JPEG noise well below 1; text and axes give tens)."""
    im = cv2.imread(str(path))
    assert im is not None, path
    assert im.shape[:2] == shape and im.std() > 1


def _results_shape(columns: int) -> tuple[int, int]:
    """results.png: figsize (12, 3 x rows) inches at 200 dpi, 5 subplots per row."""
    return 3 * 200 * -(-columns // 5), 12 * 200


LABELS_SHAPE = (8 * 200, 8 * 200)  # labels.jpg: figsize (8, 8) at 200 dpi


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions close, kept open so that the test can read what they drew."""
    kept = []
    close = utils.plots.plt.close
    monkeypatch.setattr(utils.plots.plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def _lines(fig) -> dict[str, list]:
    """Each subplot's title -> the y values of its first line (the raw results; the second is the smoothed trend)."""
    return {ax.get_title(): list(ax.get_lines()[0].get_ydata()) for ax in fig.axes if ax.get_lines()}


def test_plot_results_standard_and_extra_columns(tmp_path):
    csv = _write_csv(tmp_path / "results.csv", rows=12, extra=("sparsity/gamma_mean", "distill/loss"))
    out = plot_results(csv)
    assert out == tmp_path / "results.png"
    _assert_image(out, _results_shape(15))
    data = pd.read_csv(csv, skipinitialspace=True)
    data.columns = [c.strip() for c in data.columns]
    fig = results_figure(data)
    assert len(fig.axes) == len(data.columns) - 1 == 15  # every non-epoch column, epoch being the x axis
    assert [ax.get_title() for ax in fig.axes[:10]] == list(RESULTS_ORDER)  # upstream's 2x5 layout first
    assert [ax.get_title() for ax in fig.axes[10:]] == [*LR_COLS, "sparsity/gamma_mean", "distill/loss"]
    lines = _lines(fig)
    for c in data.columns[1:]:  # each subplot draws its own column against epoch
        assert lines[c] == pytest.approx(data[c].tolist()), c
        x = fig.axes[[ax.get_title() for ax in fig.axes].index(c)].get_lines()[0].get_xdata()
        assert list(x) == list(range(12))
    utils.plots.plt.close(fig)


def test_plot_results_single_row_and_nan(tmp_path, figures):
    _assert_image(plot_results(_write_csv(tmp_path / "results.csv", rows=1)), _results_shape(13))
    assert all(len(y) == 1 for y in _lines(figures[-1]).values()) and len(_lines(figures[-1])) == 13
    # a hook's column that is NaN in early epochs, an all-NaN column, a NaN metric: points skipped, no crash
    (tmp_path / "b").mkdir()
    csv = _write_csv(tmp_path / "b" / "results.csv", rows=5, extra=("extra/a", "extra/b"))
    data = pd.read_csv(csv, skipinitialspace=True)
    data.columns = [c.strip() for c in data.columns]
    data.loc[:2, "extra/a"] = np.nan
    data["extra/b"] = np.nan
    data.loc[1, "metrics/recall"] = np.nan
    data.to_csv(csv, index=False)
    _assert_image(plot_results(csv), _results_shape(15))
    axes = {ax.get_title(): ax for ax in figures[-1].axes}
    lines = _lines(figures[-1])
    assert lines["metrics/recall"] == pytest.approx(data["metrics/recall"].drop(1).tolist())  # NaN point skipped
    assert lines["extra/a"] == pytest.approx(data["extra/a"][3:].tolist())
    assert lines["extra/b"] == [] and [t.get_text() for t in axes["extra/b"].texts] == ["no data"]


def test_plot_results_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        plot_results(tmp_path / "results.csv")


def test_plot_labels_empty(tmp_path, figures):
    out = plot_labels(np.zeros((0, 5)), {0: "a"}, tmp_path)
    assert out == tmp_path / "labels.jpg"
    _assert_image(out, LABELS_SHAPE)
    (fig,) = figures
    assert [t.get_text() for t in fig.texts] == ["no labels"] and not any(ax.axison for ax in fig.axes)


@pytest.mark.parametrize("n,nc", [(1000, 3), (10_000, 40)])
def test_plot_labels_many(tmp_path, figures, n, nc):
    """What labels.jpg shows, read back from its figure: class counts, and the centre and size histograms."""
    rng = np.random.default_rng(0)
    wh = rng.uniform(0.02, [0.5, 0.3], (n, 2))  # boxes wider than tall: a swap of w and h shows
    labels = np.column_stack([rng.integers(0, nc, n), rng.uniform(0.1, 0.9, (n, 2)), wh])
    names = {i: f"class{i}" for i in range(nc)}
    out = plot_labels(labels, names, tmp_path / "sub")
    assert out == tmp_path / "sub" / "labels.jpg"
    _assert_image(out, LABELS_SHAPE)
    (fig,) = figures
    bars, boxes, centres, sizes = fig.axes
    assert bars.get_title() == f"{n} labels"
    assert [p.get_height() for p in bars.patches] == np.bincount(labels[:, 0].astype(int), minlength=nc).tolist()
    if nc <= 30:  # names under the bars; 40 would not fit
        assert [t.get_text() for t in bars.get_xticklabels()] == list(names.values())
    else:
        assert bars.get_xlabel() == "classes"
    for ax, (i, j) in ((centres, (1, 2)), (sizes, (3, 4))):
        counts, _, _ = np.histogram2d(labels[:, i], labels[:, j], bins=50, range=[[0, 1], [0, 1]])
        (mesh,) = ax.collections
        np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(50, 50), counts.T)  # rows are y
        assert counts.sum() == n  # every label inside [0, 1]: none dropped from the picture
    # box sizes drawn centred on a 1000 px canvas: the ink spans the widest and the tallest box (the picture's even
    # sample of 500 holds a box within a pixel or two of the largest label; antialiasing adds one more)
    ink = (np.asarray(boxes.get_images()[0].get_array()) != 255).any(axis=2)
    for axis, k in ((0, 3), (1, 4)):
        drawn = np.flatnonzero(ink.any(axis=axis))
        half = 1000 * labels[:, k].max() / 2
        assert drawn.min() == pytest.approx(500 - half, abs=3) and drawn.max() == pytest.approx(500 + half, abs=3)
