"""Plain helpers shared by several test files (fixtures live in conftest.py): tiny training command lines and their
outputs, models with spread BN weights, and the painted-scene check of the augmentation tests."""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import yaml

import detect
from conftest import ROOT, shared_path
from models.yolo import DetectionModel
from utils.checkpoint import save_checkpoint
from utils.files import yaml_load
from utils.torch_utils import count_params, spread_bn

# --- training runs -----------------------------------------------------------------------------------------------

# Not the yaml's default anchors, so a model rebuilt from its yaml cannot pass for one that kept them; whole pixels
# over power-of-2 strides, so fp16 checkpoints and 4-decimal yamls hold them exactly
ODD_ANCHORS = [[7, 9, 12, 21, 25, 17], [28, 55, 60, 44, 57, 107], [101, 83, 150, 180, 380, 300]]


def set_odd_anchors(model: nn.Module) -> nn.Module:
    d = model.model[-1]
    with torch.no_grad():
        d.anchors[:] = torch.tensor(ODD_ANCHORS, dtype=d.anchors.dtype).view(d.nl, -1, 2) / d.stride.view(-1, 1, 1)
    return model


def odd_anchors(model: nn.Module) -> bool:
    """Whether the model's anchors (in stride units) are ODD_ANCHORS (in pixels)."""
    d = model.model[-1]
    return torch.equal((d.anchors.float() * d.stride.view(-1, 1, 1)).reshape(d.nl, -1),
                       torch.tensor(ODD_ANCHORS, dtype=torch.float))


def hyp_file(tmp_path: Path, **changes) -> Path:
    h = yaml_load(ROOT / "data/hyps/hyp.scratch-low.yaml")
    h.update(changes)
    f = tmp_path / "hyp.yaml"
    f.write_text(yaml.safe_dump(h))
    return f


def tiny_args(tmp_path: Path, data: Path, *extra: str, epochs: int = 2, imgsz: int = 64) -> list[str]:
    return ["--cfg", "yolov5n.yaml", "--data", str(data), "--epochs", str(epochs), "--imgsz", str(imgsz),
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"),
            "--name", "exp", *extra]


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until `path` exists; fails if `proc` ends first or the timeout passes."""
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < timeout
        time.sleep(0.1)


# --- models ------------------------------------------------------------------------------------------------------

def spread_gammas(m: nn.Module, seed: int = 0) -> nn.Module:
    """utils.torch_utils.spread_bn with running statistics (the fold checks need them); the model in eval mode."""
    return spread_bn(m, seed, running_stats=True).eval()


def raw_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The per-level raw head outputs of the model in eval mode."""
    with torch.no_grad():
        return model.eval()(x)[1]


def save_model(model: nn.Module, path: Path) -> Path:
    """A bare checkpoint of `model` (fp16, like a finished one); the model stays float32."""
    save_checkpoint({"model": model.half(), "ema": None, "epoch": -1, "opt": {}}, path)
    model.float()
    return path


def assert_rebuilds(model: nn.Module) -> None:
    """The model's own yaml rebuilds it: same parameters, strict load, same output."""
    rebuilt = DetectionModel(model.yaml).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert count_params(rebuilt) == count_params(model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(raw_outputs(rebuilt, x), raw_outputs(model, x)))


def assert_no_empty_layer(model: nn.Module) -> None:
    assert all(m.num_features >= 1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.out_channels >= 1 and m.in_channels >= 1 for m in model.modules() if isinstance(m, nn.Conv2d))


# --- painted scenes ----------------------------------------------------------------------------------------------

# class k is painted in COLOURS[k] (BGR) on black: blends with black or the grey fill never match another colour
COLOURS = np.array([c for c in np.ndindex(2, 2, 2) if any(c)]) * 255  # 7 colours: the corners of the RGB cube


def colour_mask(im: np.ndarray, cls: int) -> np.ndarray:
    return np.abs(im.astype(np.int16) - COLOURS[int(cls)]).max(2) < 40


def assert_boxes_on_objects(im: np.ndarray, boxes: np.ndarray, min_fill: float = 0.9, tol: float = 2.0,
                            strict: bool = True, tight_at_border: bool = True) -> None:
    """boxes: (n, 5) cls + pixel xyxy on BGR image im.

    Each box: at least min_fill of its interior (1 px in from each side) has its class colour, and that colour
    reaches every side of the box within tol px (the box is tight; tight_at_border=False excuses boxes cut by the
    border after a rotation, whose corners left the image). Every pixel of a class colour lies in a box of that
    class grown by tol; with strict=False, fragments that touch the image border or are at most 3 px thin are
    allowed: objects an augmentation cut off and rightly dropped.
    """
    h, w = im.shape[:2]
    for cls in np.unique(boxes[:, 0]) if len(boxes) else []:
        mask = colour_mask(im, cls)
        covered = np.zeros_like(mask)
        for _, x1, y1, x2, y2 in boxes[boxes[:, 0] == cls]:
            m = 1 if min(x2 - x1, y2 - y1) > 4 else 0  # blended edge pixels: look inside, unless the box is thin
            inner = mask[int(round(y1)) + m:int(round(y2)) - m, int(round(x1)) + m:int(round(x2)) - m]
            assert inner.size and inner.mean() >= min_fill, (cls, (x1, y1, x2, y2), inner.mean() if inner.size else 0)
            ys, xs = np.nonzero(mask[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))])
            got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) + [int(x1), int(y1), int(x1), int(y1)]
            err = (got - [x1, y1, x2, y2]) * [1, 1, -1, -1]  # > 0: the object stops short of that side
            at_border = min(x1, y1, w - x2, h - y2) < 0.01  # labels are clipped 1e-3 inside the image
            assert err.max() <= tol or (at_border and not tight_at_border), (cls, got, (x1, y1, x2, y2))
            covered[max(int(y1 - tol), 0):int(np.ceil(y2 + tol)), max(int(x1 - tol), 0):int(np.ceil(x2 + tol))] = True
        assert not _whole_objects(mask & ~covered, strict), (cls, "object pixels outside its boxes")
    for cls in set(range(len(COLOURS))) - set(boxes[:, 0].tolist()):  # a colour without a box is no whole object
        assert not _whole_objects(colour_mask(im, cls), strict), (cls, "object without a box")


def _whole_objects(mask: np.ndarray, strict: bool) -> list:
    """Connected pieces of mask, except (strict=False) those touching the border or at most 3 px thin."""
    h, w = mask.shape
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    return [(x, y, bw, bh) for x, y, bw, bh, _ in stats[1:]
            if strict or not (x == 0 or y == 0 or x + bw == w or y + bh == h or min(bw, bh) <= 3)]


def assert_detects_like(pt: Path, exported: str | Path, tmp_path: Path, at_least: int = 4) -> None:
    """detect.py with an exported model (--dynamic, 320) on 4 shapes val images finds what it finds with the .pt."""
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((shared_path("datasets", "shapes") / "images" / "val").glob("*.jpg"))[:4]:
        shutil.copy(p, images)
    det = ["--source", str(images), "--imgsz", "320", "--nosave", "--project", str(tmp_path / "d")]
    assert_same_detections(detect.main(["--weights", str(pt), *det]), detect.main(["--weights", str(exported), *det]),
                           at_least)


def assert_same_detections(ra: dict, rb: dict, at_least: int = 1) -> None:
    """Two detect.py results (file -> detections) agree: same files, counts and classes, confidences within 1e-3 and
    boxes within 1 px (rounded to 0.1 px of whole pixels)."""
    assert ra.keys() == rb.keys() and sum(len(v) for v in ra.values()) >= at_least
    for k in ra:
        assert len(ra[k]) == len(rb[k]), k
        for da, db in zip(ra[k], rb[k]):
            assert da["class"] == db["class"] and abs(da["conf"] - db["conf"]) < 1e-3
            assert np.abs(np.subtract(da["xyxy"], db["xyxy"])).max() <= 1.0
