"""Shared test fixtures: the repo root on sys.path, ../shared (skipped cleanly when absent), tiny datasets."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
DATASETS = SHARED / "datasets"
SHAPES_NAMES = ["circle", "square", "triangle", "cross", "ring", "bar"]


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip when this checkout has none (a user's machine)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available (../shared exists only in the team's checkouts and CI)")
    return p


@pytest.fixture(scope="module")
def one_thread():
    """Small convs: with cv2 imported first, 2 torch threads run the pruning tests ~20x slower than 1 here."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shapes_yaml(tmp_path) -> Path:
    """A data yaml for ../shared/datasets/shapes."""
    root = shared_path("datasets", "shapes")
    f = tmp_path / "shapes.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                 "names": SHAPES_NAMES}))
    return f


@pytest.fixture
def coco128_yaml(tmp_path) -> Path:
    """data/coco128.yaml pointed at ../shared/datasets/coco128."""
    root = shared_path("datasets", "coco128")
    d = yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text())
    d["path"] = str(root)
    f = tmp_path / "coco128.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def make_dataset(root: Path, n: int = 6, nc: int = 2, seed: int = 0, size=(96, 128)) -> Path:
    """Write n images with filled rectangles and their YOLO labels under root/images/val, root/labels/val;
    return a data yaml for it. Rectangles of class 0 are red, class 1 green."""
    rng = np.random.default_rng(seed)
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = size
        im = np.full((h, w, 3), 40, np.uint8)
        lines = []
        for _ in range(2):
            c = int(rng.integers(0, nc))
            bw, bh = rng.integers(15, 40, 2)
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            im[y1:y1 + bh, x1:x1 + bw] = (0, 0, 255) if c == 0 else (0, 255, 0)
            lines.append(f"{c} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / "val" / f"im{i}.jpg"), im)
        (root / "labels" / "val" / f"im{i}.txt").write_text("\n".join(lines) + "\n")
    f = root / "data.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val",
                                 "names": [f"c{i}" for i in range(nc)]}))
    return f


@pytest.fixture
def log_lines():
    """Collect what the 'yolo' logger prints during a test."""
    lines: list[str] = []

    class _H(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    h = _H()
    logger = logging.getLogger("yolo")
    logger.addHandler(h)
    yield lines
    logger.removeHandler(h)


def run_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a repo script as a user would: python <script> <args>, from the repo root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, no traceback, one ERROR line on stderr mentioning the needles."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("ERROR:")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]
