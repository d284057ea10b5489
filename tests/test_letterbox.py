"""benchmarks/letterbox.py: a model's mAP and box sizes frame by frame, its frames 0 and 16 being val.py's readings."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, assert_one_line_error, run_script, shared_path

sys.path.insert(0, str(ROOT / "benchmarks"))
import letterbox  # noqa: E402
import val  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def square_shapes(tmp_path):
    """16 shapes val images cropped to their top-left square (sides are multiples of 32), with the labels that lie
    inside the crop: at --imgsz 160 val.py's rectangular batch puts a 16-pixel frame around each, --square none."""
    root = shared_path("datasets", "shapes")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for f in sorted((root / "images" / "val").glob("*"))[:16]:
        im = cv2.imread(str(f))
        h, w = im.shape[:2]
        s = min(h, w)
        cv2.imwrite(str(tmp_path / "images" / f"{f.stem}.png"), im[:s, :s])
        rows = []
        for line in (root / "labels" / "val" / f"{f.stem}.txt").read_text().splitlines():
            c, x, y, bw, bh = (float(v) for v in line.split())
            x1, y1, x2, y2 = (x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h
            if x2 <= s and y2 <= s:
                rows.append(f"{int(c)} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} "
                            f"{(y2 - y1) / s:.6f}")
        (tmp_path / "labels" / f"{f.stem}.txt").write_text("\n".join(rows) + "\n" * bool(rows))
    d = tmp_path / "square.yaml"
    d.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images", "val": "images",
                                 "names": ["circle", "square", "triangle", "cross", "ring", "bar"]}))
    return d


def test_frames_0_and_16_read_as_val_py_and_the_files_load_back(tmp_path, square_shapes):
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    out = tmp_path / "lb"
    recs = letterbox.main(["--weights", str(w), "--data", str(square_shapes), "--imgsz", "160", "--frames", "0", "16",
                           "--fills", "114", "0", "--out", str(out)])
    assert [(r["frame"], r["fill"]) for r in recs] == [(0, 114), (16, 114), (16, 0)]  # frame 0 is read once
    for square, rec in ((True, recs[0]), (False, recs[1])):
        ref = val.main(["--weights", str(w), "--data", str(square_shapes), "--imgsz", "160", "--batch-size", "4",
                        "--workers", "0", "--project", str(tmp_path), "--name", f"v{square}",
                        *(["--square"] if square else [])])[0]
        assert rec["mAP50-95"] == pytest.approx(ref["mAP50-95"], abs=1e-6)
        assert rec["mAP50"] == pytest.approx(ref["mAP50"], abs=1e-6)
        assert rec["labels"] == ref["instances"]
    assert recs[0]["mAP50-95"] > 0.3  # a trained model, so the equalities above compare real figures
    assert recs[2]["mAP50-95"] != recs[1]["mAP50-95"]  # the fill reaches the model
    assert all(0 < r["matched"] <= r["labels"] and abs(r["width_error"]) < 0.5 for r in recs)
    back = json.loads((out / "letterbox.json").read_text())
    assert back["records"] == recs
    assert "16 px, grey 0" in (out / "letterbox.md").read_text()


def test_framed_centres_the_image_on_a_stride_multiple():
    im = np.full((240, 320, 3), 7, np.uint8)
    canvas, (left, top) = letterbox.framed(im, 16, 114, 32)
    assert canvas.shape == (288, 352, 3) and (left, top) == (16, 24)
    assert (canvas[top:top + 240, left:left + 320] == 7).all()
    assert (canvas == 114).sum() == 3 * (288 * 352 - 240 * 320)
    assert letterbox.framed(im, 0, 114, 32)[0].shape == (256, 320, 3)


def test_size_errors_pair_each_label_with_its_best_confident_box_of_its_class():
    labels = torch.tensor([[0, 10, 10, 30, 30], [1, 50, 50, 70, 90]], dtype=torch.float32)
    pred = torch.tensor([[10, 10, 32, 29, 0.9, 0],   # label 0: 10% wider, 5% lower
                         [10, 10, 30, 30, 0.1, 0],   # exact, but below the confidence
                         [50, 50, 70, 90, 0.9, 0],   # label 1's box, wrong class
                         [50, 50, 68, 94, 0.8, 1]])  # label 1: 10% narrower, 10% taller
    e = letterbox.size_errors(pred, labels, 0.25)
    assert np.allclose(e, [(0.1, -0.05), (-0.1, 0.1)])
    assert letterbox.size_errors(pred[:0], labels, 0.25) == []


def test_bad_frames_are_one_line_errors():
    assert_one_line_error(run_script("benchmarks/letterbox.py", "--weights", "x.pt", "--data", "d.yaml",
                                     "--frames", "-1"), "--frames")
