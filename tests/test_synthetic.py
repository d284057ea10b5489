"""The built-in synthetic dataset: deterministic, tight labels on visible objects, generated once by check_dataset."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml

from conftest import ROOT
from utils import synthetic
from utils.data import check_dataset
from utils.errors import UserError
from utils.synthetic import CLASSES, MARKER, SynthConfig, draw_sample, generate_dataset

SMALL = SynthConfig(seed=3, train=5, val=3)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _synthetic_yaml(tmp_path, **generate):
    """data/synthetic.yaml pointed at tmp_path/ds, with a few images instead of 1,000."""
    d = yaml.safe_load((ROOT / "data" / "synthetic.yaml").read_text())
    d["path"] = str(tmp_path / "ds")
    d["generate"].update({"train": 4, "val": 2, **generate})
    f = tmp_path / "synthetic.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate_dataset(tmp_path / "a", SMALL)
    generate_dataset(tmp_path / "b", SMALL, workers=1)  # thread count must not matter
    generate_dataset(tmp_path / "c", SynthConfig(seed=4, train=5, val=3))
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len([k for k in a if k.endswith(".jpg")]) == 8 and len([k for k in a if k.endswith(".txt")]) == 8
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k != MARKER)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


def test_labels_are_tight_boxes_of_visible_contrasting_objects():
    for i in range(30):
        s = draw_sample(np.random.default_rng([0, 0, i]))
        h, w = s.image.shape[:2]
        assert 320 <= h <= 416 and 320 <= w <= 416 and 1 <= len(s.classes) <= 6
        img = s.image.astype(float)
        for k, line in enumerate(s.yolo_lines()):
            mask = s.owner == k
            ys, xs = np.nonzero(mask)
            c, cx, cy, bw, bh = map(float, line.split())
            assert c == s.classes[k] and len(line.split()[1]) == 8  # 6 decimals
            box = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=0.01)
            assert box.min() >= -0.01 and box[2] <= w + 0.01 and box[3] <= h + 0.01
            # the object stands out from what surrounds it: compare its pixels with a 3-pixel band outside
            band = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & (s.owner != k)
            assert np.linalg.norm(img[mask].mean(0) - img[band].mean(0)) > 20, (i, k)


def test_classes_balanced_and_sizes_varied():
    counts, rel_sizes, per_image = np.zeros(len(CLASSES), int), [], []
    for i in range(60):
        s = draw_sample(np.random.default_rng([1, 0, i]))
        np.add.at(counts, s.classes, 1)
        rel_sizes += list((s.boxes[:, 2:] - s.boxes[:, :2]).max(1) / min(s.image.shape[:2]))
        per_image.append(len(s.classes))
    assert counts.min() >= 0.6 * counts.mean() and counts.max() <= 1.4 * counts.mean(), counts
    assert min(rel_sizes) < 0.12 and max(rel_sizes) > 0.4
    assert min(per_image) <= 2 and max(per_image) >= 5


def test_check_dataset_generates_once(tmp_path, log_lines):
    f = _synthetic_yaml(tmp_path)
    d = check_dataset(f, splits=("train", "val"))
    root = tmp_path / "ds"
    assert d["path"] == str(root) and d["nc"] == len(CLASSES) and d["train"] == str(root / "images" / "train")
    assert any(x.startswith("Generating synthetic dataset (6 images)") for x in log_lines)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert len(list((root / "labels" / "val").glob("*.txt"))) == 2
    log_lines.clear()
    check_dataset(f, splits=("train", "val"))
    assert not any("Generating" in x for x in log_lines)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes


def test_interrupted_or_changed_generation_is_redone(tmp_path, monkeypatch, log_lines):
    f = _synthetic_yaml(tmp_path)
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return draw(*args)

    draw = synthetic.draw_sample
    monkeypatch.setattr(synthetic, "draw_sample", failing)
    with pytest.raises(RuntimeError, match="killed"):
        check_dataset(f, splits=("train", "val"))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic.yaml"]  # the partial copy was removed
    root = tmp_path / "ds"
    check_dataset(f, splits=("train", "val"))
    before = _files(root)
    (root / MARKER).unlink()  # as if killed between the last image and the marker
    log_lines.clear()
    check_dataset(f, splits=("train", "val"))
    assert any("Generating" in x for x in log_lines) and _files(root) == before
    check_dataset(_synthetic_yaml(tmp_path, seed=1), splits=("train", "val"))  # new settings: new images
    after = _files(root)
    assert after.keys() == before.keys() and after["images/val/00000.jpg"] != before["images/val/00000.jpg"]


def test_bad_generate_section_and_foreign_folder(tmp_path):
    with pytest.raises(UserError, match="unknown key"):
        check_dataset(_synthetic_yaml(tmp_path, sed=1))
    with pytest.raises(UserError, match="object_size"):
        check_dataset(_synthetic_yaml(tmp_path, object_size=[0.5, 0.1]))
    d = yaml.safe_load(_synthetic_yaml(tmp_path).read_text())
    with pytest.raises(UserError, match="draws 6 classes"):
        check_dataset({**d, "names": ["a", "b"]})
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="was not generated"):
        check_dataset(d)
    assert (tmp_path / "ds" / "mine.txt").read_text() == "keep me"
