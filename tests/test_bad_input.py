"""Every script, run as a user would (its main() with argv), on the mistakes users make: one clear ERROR line and a
non-zero exit, never a traceback, no half-written output, nothing in the dataset folder modified."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import detect
import export
import finetune
import prune
import train
import train_sparse
import val
from conftest import ROOT, make_dataset
from models.yolo import DetectionModel
from utils.checkpoint import save_checkpoint

SCRIPTS = {"train": train.main, "train_sparse": train_sparse.main, "prune": prune.main, "finetune": finetune.main,
           "val": val.main, "detect": detect.main, "export": export.main}
WEIGHT_SCRIPTS = list(SCRIPTS)  # all take --weights


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    data = make_dataset(d / "ds", n=4, nc=2)
    torch.manual_seed(0)
    m = DetectionModel("yolov5n.yaml", nc=2).eval()
    m.names = {0: "c0", 1: "c1"}
    good = d / "good.pt"
    save_checkpoint({"model": m.half(), "ema": None, "epoch": -1, "opt": {}}, good)
    (d / "truncated.pt").write_bytes(good.read_bytes()[:3000])
    torch.save({"weights": torch.zeros(3)}, d / "nomodel.pt")
    (d / "garbled.yaml").write_text("path: x\nnames: [a, b\n  train: : images\n")
    (d / "ncbad.yaml").write_text(yaml.safe_dump({**yaml.safe_load(data.read_text()), "nc": 3}))
    cfg = yaml.safe_load((ROOT / "models" / "yolov5n.yaml").read_text())
    cfg["backbone"][1] = [-1, 1, "Foo", [128, 3, 2]]
    (d / "unknown_module.yaml").write_text(yaml.safe_dump(cfg))
    return {"dir": d, "data": data, "good": good, "truncated": d / "truncated.pt", "nomodel": d / "nomodel.pt",
            "missing": d / "missing.pt", "garbled": d / "garbled.yaml", "ncbad": d / "ncbad.yaml",
            "unknown_module": d / "unknown_module.yaml", "images": d / "ds" / "images" / "val"}


def _argv(script: str, weights: Path, f: dict, tmp_path: Path) -> list[str]:
    """The smallest command line for `script` with these weights; outputs under tmp_path."""
    project = ["--project", str(tmp_path / "runs")]
    data = ["--data", str(f["data"])]
    return {"train": ["--weights", str(weights), *data, "--epochs", "1", "--imgsz", "64", *project],
            "train_sparse": ["--weights", str(weights), *data, "--epochs", "1", "--imgsz", "64", *project],
            "prune": ["--weights", str(weights), "--percent", "0.3", *project],
            "finetune": ["--weights", str(weights), *data, "--epochs", "1", "--imgsz", "64", *project],
            "val": ["--weights", str(weights), *data, "--imgsz", "64", *project],
            "detect": ["--weights", str(weights), "--source", str(f["images"]), "--imgsz", "64", *project],
            "export": ["--weights", str(weights), "--imgsz", "64"]}[script]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def one_line_error(main, argv: list[str], capsys, *needles: str) -> str:
    """main(argv) must exit non-zero with exactly one ERROR line naming the needles (an unexpected exception fails
    the test with its traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code not in (0, None), err
    lines = [x for x in err.splitlines() if x.startswith("ERROR:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _no_outputs(tmp_path: Path) -> None:
    """No checkpoint, onnx or yaml written (a run folder may exist, empty of results)."""
    leftovers = [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".onnx", ".yaml", ".json", ".tmp")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("script", WEIGHT_SCRIPTS)
@pytest.mark.parametrize("kind, needle", [("missing", "not found"), ("truncated", "truncated or corrupt"),
                                          ("nomodel", "not a YOLOv5 checkpoint")])
def test_bad_weights(script, kind, needle, files, tmp_path, capsys):
    before = _snapshot(files["dir"] / "ds")
    one_line_error(SCRIPTS[script], _argv(script, files[kind], files, tmp_path), capsys, needle)
    _no_outputs(tmp_path)
    assert _snapshot(files["dir"] / "ds") == before


@pytest.mark.parametrize("script", ["train", "val", "finetune", "prune"])
@pytest.mark.parametrize("kind, needle", [("garbled", "invalid yaml"), ("ncbad", "nc")])
def test_bad_data_yaml(script, kind, needle, files, tmp_path, capsys):
    argv = _argv(script, files["good"], files, tmp_path)
    argv = [a if a != str(files["data"]) else str(files[kind]) for a in argv]
    if script == "prune":
        argv += ["--data", str(files[kind])]
    one_line_error(SCRIPTS[script], argv, capsys, needle)
    _no_outputs(tmp_path)


def test_unknown_module_in_model_yaml(files, tmp_path, capsys):
    one_line_error(train.main, ["--cfg", str(files["unknown_module"]), "--weights", "", "--data", str(files["data"]),
                                "--epochs", "1", "--imgsz", "64", "--project", str(tmp_path)], capsys, "Foo")
    _no_outputs(tmp_path)


@pytest.mark.parametrize("percent", ["-0.1", "1.0"])
def test_percent_out_of_range(percent, files, tmp_path, capsys):
    one_line_error(prune.main, ["--weights", str(files["good"]), "--percent", percent, "--project", str(tmp_path)],
                   capsys, "--percent")
    _no_outputs(tmp_path)


def test_percent_not_a_number(files, tmp_path, capsys):
    one_line_error(prune.main, ["--weights", str(files["good"]), "--percent", "abc", "--project", str(tmp_path)],
                   capsys, "--percent", "'abc'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("script", ["train", "val", "detect", "prune", "finetune"])
def test_cuda_requested_without_gpu(script, files, tmp_path, capsys):
    argv = _argv(script, files["good"], files, tmp_path) + ["--device", "cuda"]
    one_line_error(SCRIPTS[script], argv, capsys, "CUDA is not available")
    _no_outputs(tmp_path)


def test_imgsz_not_a_stride_multiple_is_rounded_up_with_a_warning(files, tmp_path, log_lines):
    rec = val.main(["--weights", str(files["good"]), "--data", str(files["data"]), "--imgsz", "100",
                    "--project", str(tmp_path), "--workers", "0", "--no-plots"])[0]
    assert rec["imgsz"] == 128 and any("multiple of stride 32" in x for x in log_lines)


def test_corrupt_images_and_bad_labels_are_skipped_by_name_and_left_alone(files, tmp_path, log_lines):
    root = tmp_path / "ds"
    shutil.copytree(files["dir"] / "ds", root, ignore=shutil.ignore_patterns("*.cache"))
    data = yaml.safe_load(files["data"].read_text())
    data["path"] = str(root)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    (root / "images/val/broken.jpg").write_bytes(b"\xff\xd8not really a jpeg")
    (root / "labels/val/broken.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    bad = {"im0": "0 0.5 0.5 0.2\n", "im1": "0 nan 0.5 0.2 0.2\n", "im2": "1 0.5 0.5 -0.2 0.2\n",
           "im3": "7 0.5 0.5 0.2 0.2\n"}
    for stem, line in bad.items():
        (root / f"labels/val/{stem}.txt").write_text(line)
    shutil.copy(root / "images/val/im0.jpg", root / "images/val/dup.jpg")
    (root / "labels/val/dup.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    before = _snapshot(root)
    rec = val.main(["--weights", str(files["good"]), "--data", str(tmp_path / "d.yaml"), "--imgsz", "64",
                    "--project", str(tmp_path / "runs"), "--workers", "0", "--no-plots"])[0]
    text = "\n".join(log_lines)
    for name in ("broken.jpg", *[f"{s}.txt" for s in bad]):
        assert name in text, name
    assert rec["images"] == 1 and rec["instances"] == 1  # only dup.jpg survives, its duplicate row dropped
    after = _snapshot(root)
    assert {k: after[k] for k in before} == before  # every file untouched
    assert set(after) - set(before) == {"labels/val.cache"}  # the label cache beside labels/val/, as upstream
