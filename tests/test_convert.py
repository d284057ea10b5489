"""utils/convert.py: Pascal VOC and DeepPCB trees to YOLO format, and grayscale images through loading and training."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

import utils.convert as convert
from conftest import ROOT, assert_one_line_error, run_script
from utils.augmentations import HYP_DEFAULTS
from utils.dataloaders import create_dataloader
from utils.files import yaml_load

VOC_NAMES = ["RBC", "WBC", "Platelets"]


def _voc_xml(path: Path, size: tuple[int, int], objects: list[tuple]) -> None:
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                   f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def voc_tree(root: Path, imagesets: bool = True) -> Path:
    """a (100x80, train): WBC, RBC crossing the right edge, Platelets outside the image; b (train): xml says 100x80
    but the image is 200x100; c (val): one RBC; d: in no split list. Returns the BCCD-like folder."""
    src = root / "BCCD"
    (src / "Annotations").mkdir(parents=True)
    (src / "JPEGImages").mkdir()
    images = {"a": ((100, 80), [("WBC", 10, 20, 30, 60), ("RBC", 50, 0, 120, 40), ("Platelets", 150, 10, 170, 30)]),
              "b": ((200, 100), [("Platelets", 20, 10, 60, 50)]),
              "c": ((100, 80), [("RBC", 0, 0, 50, 40)]),
              "d": ((100, 80), [("RBC", 1, 1, 20, 20)])}
    for stem, ((w, h), objects) in images.items():
        cv2.imwrite(str(src / "JPEGImages" / f"{stem}.jpg"), np.full((h, w, 3), (40, 90, 200), np.uint8))
        _voc_xml(src / "Annotations" / f"{stem}.xml", (100, 80) if stem == "b" else (w, h), objects)
    if imagesets:
        main = src / "ImageSets" / "Main"
        main.mkdir(parents=True)
        lists = {"train": "a\nb\n", "val": "c\n", "trainval": "a\nb\nc\n", "RBC_train": "a  1\nb -1\n"}
        for name, text in lists.items():  # trainval and per-class lists are not splits
            (main / f"{name}.txt").write_text(text)
    return src


def read_labels(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2).reshape(-1, 5)


def test_voc_labels_splits_names_and_clipping(tmp_path, log_lines):
    dst = tmp_path / "out"
    rec = convert.main(["voc", str(voc_tree(tmp_path)), str(dst)])
    assert (dst / "names.txt").read_text() == "WBC\nRBC\nPlatelets\n"  # as first met in a.xml, b.xml, ...
    assert sorted(p.name for p in (dst / "images/train").iterdir()) == ["a.jpg", "b.jpg"]
    assert sorted(p.name for p in (dst / "images/val").iterdir()) == ["c.jpg"]
    assert not (dst / "images/test").exists() and not (dst / "images/trainval").exists()
    a = (dst / "labels/train/a.txt").read_text().splitlines()
    # WBC (10,20)-(30,60) in 100x80; RBC (50,0)-(120,40) clipped to x2=100; Platelets outside: dropped
    assert a == ["0 0.200000 0.500000 0.200000 0.500000", "1 0.750000 0.250000 0.500000 0.500000"]
    # b's xml says 100x80, the image is 200x100: the image's size counts
    np.testing.assert_allclose(read_labels(dst / "labels/train/b.txt"), [[2, 40 / 200, 30 / 100, 0.2, 0.4]], atol=1e-6)
    np.testing.assert_allclose(read_labels(dst / "labels/val/c.txt"), [[1, 0.25, 0.25, 0.5, 0.5]], atol=1e-6)
    assert rec["images"] == {"train": 2, "val": 1} and rec["boxes"] == {"train": 3, "val": 1}
    assert (rec["clipped_boxes"], rec["dropped_boxes"], rec["unlisted"], rec["skipped_images"]) == (1, 1, 1, 0)
    assert any("b.xml: says 100x80" in x and "200x100" in x for x in log_lines)
    assert log_lines[-1].startswith(f"Converted to {dst}: train 2 images 3 boxes, val 1 images 1 boxes; skipped 0")
    assert json.loads((dst / "convert.json").read_text())["names"] == ["WBC", "RBC", "Platelets"]
    assert not list(dst.rglob("*.tmp"))


def test_voc_names_given_unknown_classes_and_no_imagesets(tmp_path):
    src = voc_tree(tmp_path, imagesets=False)
    dst = tmp_path / "out"
    rec = convert.main(["voc", str(src), str(dst), "--names", *VOC_NAMES, "--split", "val"])
    assert (dst / "names.txt").read_text().split() == VOC_NAMES
    assert rec["images"] == {"val": 4} and rec["unlisted"] == 0
    assert [r[0] for r in read_labels(dst / "labels/val/a.txt")] == [1, 0]  # WBC is 1, RBC 0 with --names
    r = run_script("-m", "utils.convert", "voc", str(src), str(tmp_path / "o2"), "--names", "RBC", "WBC")
    assert_one_line_error(r, "a.xml", "'Platelets'", "--skip-unknown")
    rec = convert.main(["voc", str(src), str(tmp_path / "o3"), "--names", "RBC", "--skip-unknown"])
    # left out before clipping: a's WBC and Platelets (the one outside the image), b's Platelets; a, c, d keep an RBC
    assert rec["unknown_boxes"] == 3 and rec["boxes"] == {"train": 3} and rec["dropped_boxes"] == 0


def deeppcb_tree(root: Path, size: int = 96) -> tuple[Path, list[str]]:
    """PCBData with 5 trainval images in group00041 and 1 test image in group12000 (grayscale JPEGs, templates
    beside them) and the two split lists; returns PCBData and the trainval names in list order."""
    pcb, rng = root / "DeepPCB" / "PCBData", np.random.default_rng(0)
    entries = {"trainval": [("00041", f"0004100{i}") for i in (3, 0, 4, 1, 2)], "test": [("12000", "12000000")]}
    for list_name, items in entries.items():
        lines = []
        for g, name in items:
            (pcb / f"group{g}" / g).mkdir(parents=True, exist_ok=True)
            (pcb / f"group{g}" / f"{g}_not").mkdir(exist_ok=True)
            for kind in ("test", "temp"):
                cv2.imwrite(str(pcb / f"group{g}" / g / f"{name}_{kind}.jpg"),
                            rng.integers(0, 255, (size, size), dtype=np.uint8))  # 2-D: a grayscale JPEG
            (pcb / f"group{g}" / f"{g}_not" / f"{name}.txt").write_text("10 20 40 50 1\n60 60 100 90 6\n")
            lines.append(f"group{g}/{g}/{name}.jpg group{g}/{g}_not/{name}.txt")
        (pcb.parent / f"{list_name}.txt").write_text("\n".join(lines) + "\n")
    return pcb, [name for _, name in entries["trainval"]]


def test_deeppcb_labels_splits_and_grayscale_kept(tmp_path):
    pcb, names = deeppcb_tree(tmp_path)
    dst = tmp_path / "out"
    rec = convert.main(["deeppcb", str(pcb), str(dst), "--val-share", "0.4", "--seed", "0"])
    assert (dst / "names.txt").read_text().split() == ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
    shuffled = names.copy()
    random.Random(0).shuffle(shuffled)  # the documented split: list order, seeded shuffle, val first
    stems = {s: sorted(p.stem for p in (dst / "images" / s).iterdir()) for s in ("train", "val", "test")}
    assert stems == {"train": sorted(shuffled[2:]), "val": sorted(shuffled[:2]), "test": ["12000000"]}
    assert rec["images"] == {"train": 3, "val": 2, "test": 1} and rec["boxes"] == {"train": 6, "val": 4, "test": 2}
    # type 1 -> 0; type 6 -> 5 with x2=100 clipped to the 96-pixel image
    expected = [[0, 25 / 96, 35 / 96, 30 / 96, 30 / 96], [5, 78 / 96, 75 / 96, 36 / 96, 30 / 96]]
    np.testing.assert_allclose(read_labels(dst / "labels/test/12000000.txt"), expected, atol=1e-6)
    assert rec["clipped_boxes"] == 6
    out = dst / "images/val" / f"{shuffled[0]}.jpg"
    assert out.read_bytes() == (pcb / "group00041/00041" / f"{shuffled[0]}_test.jpg").read_bytes()
    with Image.open(out) as im:
        assert im.mode == "L"
    again = convert.main(["deeppcb", str(pcb.parent), str(tmp_path / "again"), "--val-share", "0.4"])  # DeepPCB/
    assert sorted(p.stem for p in (tmp_path / "again/images/val").iterdir()) == stems["val"]
    assert again["images"] == rec["images"]


def test_deeppcb_without_lists_and_bad_annotations(tmp_path):
    pcb, _ = deeppcb_tree(tmp_path)
    for f in ("trainval.txt", "test.txt"):
        (pcb.parent / f).unlink()
    rec = convert.main(["deeppcb", str(pcb), str(tmp_path / "out")])
    assert rec["images"] == {"train": 6} and (tmp_path / "out/labels/train/00041003.txt").is_file()
    bad = pcb / "group00041/00041_not/00041002.txt"
    bad.write_text("10 20 40 50 1\n1 2 3 4 7\n")
    r = run_script("-m", "utils.convert", "deeppcb", str(pcb), str(tmp_path / "o2"))
    assert_one_line_error(r, str(bad), "line 2", "type 7")


@pytest.mark.parametrize("fmt", ["voc", "deeppcb"])
def test_missing_source_is_one_line_error(tmp_path, fmt):
    r = run_script("-m", "utils.convert", fmt, str(tmp_path / "nope"), str(tmp_path / "out"))
    assert_one_line_error(r, "source folder not found", "nope")
    assert not (tmp_path / "out").exists()


def test_bad_val_share_and_unreadable_xml(tmp_path):
    r = run_script("-m", "utils.convert", "deeppcb", str(tmp_path), str(tmp_path / "out"), "--val-share", "1")
    assert_one_line_error(r, "--val-share")
    src = voc_tree(tmp_path)
    (src / "Annotations/a.xml").write_text("<annotation><size>")
    r = run_script("-m", "utils.convert", "voc", str(src), str(tmp_path / "out"))
    assert_one_line_error(r, "a.xml", "unreadable annotation")


def test_interrupted_run_leaves_no_partial_files(tmp_path, monkeypatch):
    """Killed while copying the second image: no temp file, no image without its label; a rerun completes."""
    src, dst = voc_tree(tmp_path), tmp_path / "out"
    copy, calls = convert.shutil.copyfileobj, []

    def flaky(fsrc, fdst):
        calls.append(1)
        if len(calls) == 2:
            fdst.write(fsrc.read(10))
            raise KeyboardInterrupt
        copy(fsrc, fdst)

    monkeypatch.setattr(convert.shutil, "copyfileobj", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(convert.parse_opt(["voc", str(src), str(dst)]))
    assert [p.name for p in dst.rglob("*.jpg")] == ["a.jpg"] and not list(dst.rglob(".*"))
    assert all((dst / "labels/train" / f"{p.stem}.txt").is_file() for p in dst.rglob("*.jpg"))
    monkeypatch.setattr(convert.shutil, "copyfileobj", copy)
    assert convert.main(["voc", str(src), str(dst)])["images"] == {"train": 2, "val": 1}


def test_converted_datasets_load_through_the_dataloader(tmp_path):
    voc = tmp_path / "voc"
    convert.main(["voc", str(voc_tree(tmp_path)), str(voc)])
    pcb = tmp_path / "pcb"
    convert.main(["deeppcb", str(deeppcb_tree(tmp_path)[0]), str(pcb), "--val-share", "0.4"])
    for images, nc, n_images, n_boxes in ((voc / "images/train", 3, 2, 3), (pcb / "images/train", 6, 3, 6)):
        loader, dataset = create_dataloader(str(images), imgsz=64, batch_size=2, stride=32, nc=nc, workers=0)
        assert len(dataset) == n_images and sum(len(lb) for lb in dataset.labels) == n_boxes
        imgs, targets, _, _ = next(iter(loader))
        assert imgs.shape == (2, 3, 64, 64) and targets.shape[1] == 6


def test_grayscale_is_three_equal_channels_after_augmentation(tmp_path):
    """cv2.imread's default flag decodes a grayscale JPEG to 3 equal channels; mosaic, affine warps (grey fill),
    mixup and HSV jitter (zero saturation stays zero) keep them equal, so the model sees a grey 3-channel image."""
    dst = tmp_path / "pcb"
    convert.main(["deeppcb", str(deeppcb_tree(tmp_path)[0]), str(dst), "--val-share", "0"])
    hyp = {**HYP_DEFAULTS, "mosaic": 1.0, "mixup": 0.5, "hsv_h": 0.5, "hsv_s": 0.9, "hsv_v": 0.9, "degrees": 10.0}
    loader, _ = create_dataloader(str(dst / "images/train"), imgsz=64, batch_size=5, stride=32, nc=6, workers=0,
                                  augment=True, hyp=hyp, shuffle=True)
    imgs, targets, _, _ = next(iter(loader))
    assert imgs.shape == (5, 3, 64, 64) and len(targets)
    assert (imgs[:, 0] == imgs[:, 1]).all() and (imgs[:, 1] == imgs[:, 2]).all()


def test_grayscale_dataset_trains(tmp_path):
    import train

    dst = tmp_path / "pcb"
    convert.main(["deeppcb", str(deeppcb_tree(tmp_path, size=64)[0]), str(dst), "--val-share", "0.4"])
    data = tmp_path / "pcb.yaml"
    data.write_text(yaml.safe_dump({"path": str(dst), "train": "images/train", "val": "images/val",
                                    "names": (dst / "names.txt").read_text().split()}))
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(yaml.safe_dump({**yaml_load(ROOT / "data/hyps/hyp.scratch-low.yaml"), "nbs": 2}))  # step per batch
    rec = train.run(train.parse_opt(["--cfg", "yolov5n.yaml", "--data", str(data), "--hyp", str(hyp), "--epochs", "1",
                                     "--imgsz", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                                     "--project", str(tmp_path / "runs"), "--name", "exp", "--noplots"]))
    save_dir = tmp_path / "runs/exp"
    assert (save_dir / "weights/last.pt").is_file() and rec["epochs"] == 1
    with open(save_dir / "results.csv") as f:
        rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    assert len(rows) == 1
    losses = [float(rows[0][k]) for k in ("train/box_loss", "train/obj_loss", "train/cls_loss")]
    assert all(math.isfinite(x) for x in losses) and sum(losses) > 0
