"""Dataset yamls, image listing, label checks, letterbox and rectangular batches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml

from conftest import make_dataset
from utils.augmentations import letterbox
from utils.data import check_dataset
from utils.dataloaders import LoadImagesAndLabels, rect_batch_shapes
from utils.errors import UserError
from utils.labels import img2label_paths, list_images


def _yaml(tmp_path, d):
    f = tmp_path / "d.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def test_check_dataset_names_forms(tmp_path):
    (tmp_path / "images").mkdir()
    base = {"path": str(tmp_path), "val": "images"}
    assert check_dataset(_yaml(tmp_path, {**base, "names": ["a", "b"]}))["names"] == {0: "a", 1: "b"}
    d = check_dataset(_yaml(tmp_path, {**base, "names": {0: "a", 1: "b"}, "nc": 2}))
    assert d["names"] == {0: "a", 1: "b"} and d["nc"] == 2 and d["val"] == str(tmp_path / "images")
    assert check_dataset(_yaml(tmp_path, {**base, "nc": 3}))["names"] == {0: "class0", 1: "class1", 2: "class2"}
    with pytest.raises(UserError, match="nc is 3 but 2 names"):
        check_dataset(_yaml(tmp_path, {**base, "names": ["a", "b"], "nc": 3}))
    with pytest.raises(UserError, match="val images not found"):
        check_dataset(_yaml(tmp_path, {**base, "val": "missing", "nc": 1}))
    with pytest.raises(UserError, match="yaml file not found"):
        check_dataset(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("names: [a, b\nval: x\n")
    with pytest.raises(UserError, match="invalid yaml"):
        check_dataset(bad)


def test_list_images_folders_globs_and_list_files(tmp_path):
    im = np.zeros((20, 20, 3), np.uint8)
    for p in ("a/1.jpg", "a/b/2.png", "a/b/c/3.JPG", "a/notes.txt"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / p), im) if not p.endswith("txt") else (tmp_path / p).write_text("x")
    assert [f.rsplit("/", 1)[1] for f in list_images(tmp_path / "a")] == ["1.jpg", "2.png", "3.JPG"]
    assert len(list_images(str(tmp_path / "a" / "*.jpg"))) == 1
    lst = tmp_path / "list.txt"
    lst.write_text("./a/1.jpg\na/b/2.png\n")
    assert list_images(lst) == [str(tmp_path / "a/1.jpg"), str(tmp_path / "a/b/2.png")]
    with pytest.raises(UserError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    assert img2label_paths(["/d/images/x/images/y.jpg"]) == ["/d/images/x/labels/y.txt"]


def test_letterbox_padding():
    im = np.zeros((300, 400, 3), np.uint8)
    out, ratio, pad = letterbox(im, 640, auto=False)
    assert out.shape == (640, 640, 3) and ratio == (1.6, 1.6) and pad == (0.0, 80.0)
    out, ratio, pad = letterbox(im, 640, auto=True)  # minimum rectangle: 480 -> 480 (multiple of 32)
    assert out.shape == (480, 640, 3) and pad == (0.0, 0.0)
    out, _, pad = letterbox(np.zeros((101, 200, 3), np.uint8), (128, 200), auto=False, scaleup=False)
    assert out.shape == (128, 200, 3) and pad == (0.0, 13.5)
    assert (out[:13] == 114).all() and (out[13:114] == 0).all() and (out[114:] == 114).all()  # odd pixel below


def test_rect_batch_shapes():
    # (w, h), sorted by h/w: two landscape images, then two portrait
    shapes = np.array([[400, 200], [400, 300], [300, 400], [200, 400]], float)
    s = rect_batch_shapes(shapes, batch_size=2, img_size=320, stride=32, pad=0.5)
    # landscape batch (tallest h/w 0.75): height ceil(320 * 0.75 / 32 + 0.5) * 32 = 256, width ceil(10.5) * 32 = 352
    assert s.tolist() == [[256, 352], [352, 256]]


def test_bad_files_are_skipped_with_warnings_naming_them(tmp_path, log_lines):
    data = make_dataset(tmp_path, n=8, nc=2)
    lb = tmp_path / "labels" / "val"
    img = tmp_path / "images" / "val"
    raw = (img / "im0.jpg").read_bytes()
    (img / "im0.jpg").write_bytes(raw[: len(raw) // 2])  # truncated JPEG
    (lb / "im1.txt").write_text("")  # empty: a background image
    (lb / "im2.txt").write_text("5 0.5 0.5 0.1 0.1\n")  # class >= nc
    (lb / "im3.txt").write_text("0 0.5 1.5 0.1 0.1\n")  # outside [0, 1]
    (lb / "im4.txt").write_text("0 0.5 0.5 0.1\n")  # wrong field count
    (img / "im5.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # unreadable
    ds = LoadImagesAndLabels(str(img), img_size=128, batch_size=4, nc=2, workers=2)
    kept = sorted(f.rsplit("/", 1)[1] for f in ds.im_files)
    assert kept == ["im1.jpg", "im6.jpg", "im7.jpg"]
    text = "\n".join(log_lines)
    for name, why in [("im0.jpg", "truncated"), ("im1.txt", "empty"), ("im2.txt", "out of range"),
                      ("im3.txt", "outside [0, 1]"), ("im4.txt", "fields"), ("im5.jpg", "unreadable")]:
        assert any(name in x and why in x for x in log_lines), (name, text)
    assert len(ds.labels[kept.index("im1.jpg")]) == 0
    assert "3 images" not in text and "2 images with labels, 1 backgrounds, 5 skipped" in text
    assert check_dataset(data)["nc"] == 2


def test_dataset_items_map_labels_into_the_letterbox(tmp_path):
    make_dataset(tmp_path, n=2, nc=2, size=(96, 128))
    ds = LoadImagesAndLabels(str(tmp_path / "images" / "val"), img_size=64, batch_size=2, rect=True, pad=0.5)
    im, labels, path, (shape0, (ratio, pad)) = ds[0]
    # 128x96 -> long side 64: 64x48, batch shape (ceil(48/32 + .5) * 32, ceil(64/32 + .5) * 32) = (64, 96)
    assert tuple(im.shape) == (3, 64, 96) and shape0 == (96, 128) and ratio == (0.5, 0.5) and pad == (16.0, 8.0)
    raw = np.loadtxt(tmp_path / "labels" / "val" / "im0.txt", ndmin=2)
    cx = (raw[:, 1] * 64 + 16) / 96  # normalised to the padded image
    assert np.allclose(labels[:, 2].numpy(), cx, atol=1e-5)
    assert np.allclose(labels[:, 5].numpy(), raw[:, 4] * 48 / 64, atol=1e-5)
