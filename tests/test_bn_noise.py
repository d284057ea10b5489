"""benchmarks/bn_noise.py: the spread a model's val mAP takes from its BN estimate, and from the letterbox."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from conftest import ROOT, assert_one_line_error, run_script, shared_path

sys.path.insert(0, str(ROOT / "benchmarks"))
import bn_noise  # noqa: E402
import val  # noqa: E402
from utils.data import check_dataset  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def shapes_small(tmp_path):
    """shapes with 24 val images (the list in a txt file, as YOLOv5 accepts)."""
    root = shared_path("datasets", "shapes")
    ims = sorted((root / "images" / "val").glob("*"))[:24]
    (tmp_path / "val.txt").write_text("\n".join(str(p) for p in ims) + "\n")
    f = tmp_path / "shapes.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": str(tmp_path / "val.txt"),
                                 "names": ["circle", "square", "triangle", "cross", "ring", "bar"]}))
    return f


def test_draws_spread_the_figure_and_the_saved_row_is_val_py(tmp_path, shapes_small):
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    out = tmp_path / "noise"
    rec = bn_noise.main(["--weights", str(w), "--data", str(shapes_small), "--imgsz", "160", "--batch-size", "4",
                         "--batches", "1", "3", "--draws", "2", "--workers", "0", "--out", str(out)])
    rows = rec["rows"]
    assert [(r["batches"], r["seed"]) for r in rows] == [(0, None), (1, 0), (1, 1), (3, 0), (3, 1)]
    # the checkpoint as saved reads what val.py reads, in both letterboxes
    for square in (False, True):
        ref = val.main(["--weights", str(w), "--data", str(shapes_small), "--imgsz", "160", "--batch-size", "8",
                        "--workers", "0", "--project", str(tmp_path), "--name", f"v{square}",
                        *(["--square"] if square else [])])[0]
        key = "square" if square else "rect"
        assert rows[0][f"mAP50-95_{key}"] == pytest.approx(ref["mAP50-95"], abs=1e-6)
        assert rows[0][f"mAP50_{key}"] == pytest.approx(ref["mAP50"], abs=1e-6)
    # a new BN estimate moves the figure, and two draws of one batch do not agree
    assert rows[1]["mAP50-95_rect"] != rows[2]["mAP50-95_rect"]
    assert all(r["mAP50-95_rect"] != rows[0]["mAP50-95_rect"] for r in rows[1:])
    # the summary is the min / mean / max of its draws, and the files load back
    back = json.loads((out / "bn_noise.json").read_text())
    assert back["rows"] == rows
    for s in back["summary"]:
        v = [r["mAP50-95_square"] for r in rows if r["batches"] == s["batches"]]
        assert s["square"] == pytest.approx({"min": min(v), "mean": sum(v) / len(v), "max": max(v)})
    assert "3 batches, seed 1" in (out / "bn_noise.md").read_text()


def test_a_draw_is_repeatable_and_seeds_differ(shapes_small):
    data = check_dataset(shapes_small, splits=("train", "val"))
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.finetune.yaml").read_text())
    a, b, c = (bn_noise.train_batches(data, hyp, 128, 2, 32, 2, seed, 0) for seed in (0, 0, 1))
    assert len(a) == 2 and a[0].shape == (2, 3, 128, 128) and 0 <= float(a[0].min()) <= float(a[0].max()) <= 1
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_bad_counts_are_one_line_errors():
    assert_one_line_error(run_script("benchmarks/bn_noise.py", "--weights", "x.pt", "--data", "d.yaml",
                                     "--draws", "0"), "--draws")
