"""detect.py: annotated images, label files and detections.json from a trained checkpoint."""

from __future__ import annotations

import json

import cv2
import numpy as np

import detect
from conftest import assert_one_line_error, run_script, shared_path


def test_detect_folder_writes_images_labels_json(tmp_path):
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    src = shared_path("datasets", "shapes", "images", "val")
    imgs = sorted(src.glob("*"))[:3]
    (tmp_path / "in").mkdir()
    for p in imgs:
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    res = detect.main(["--weights", str(w), "--source", str(tmp_path / "in"), "--imgsz", "320", "--save-txt",
                       "--save-conf", "--project", str(tmp_path / "runs")])
    out = tmp_path / "runs" / "exp"
    assert json.loads((out / "detections.json").read_text()) == json.loads(json.dumps(res))
    for p in imgs:
        dets = res[str(tmp_path / "in" / p.name)]
        assert dets and all(d["conf"] >= 0.25 for d in dets)  # every val image has objects the model finds
        annotated, original = cv2.imread(str(out / p.name)), cv2.imread(str(p))
        assert annotated.shape == original.shape and not np.array_equal(annotated, original)
        rows = np.loadtxt(out / "labels" / f"{p.stem}.txt", ndmin=2)
        assert rows.shape == (len(dets), 6) and (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()
        # the label file and the json describe the same boxes
        h, w_ = original.shape[:2]
        x1 = (rows[:, 1] - rows[:, 3] / 2) * w_
        assert np.allclose(sorted(x1), sorted(d["xyxy"][0] for d in dets), atol=1.0)


def test_detect_missing_source(tmp_path):
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    r = run_script("detect.py", "--weights", str(w), "--source", str(tmp_path / "none"), "--project", str(tmp_path))
    assert_one_line_error(r, "does not exist")
