"""Checkpoints: upstream YOLOv5's files load here, ours round-trip, broken files fail with one clear line."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import shared_path
from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from utils.errors import UserError
from utils.torch_utils import count_params


def test_upstream_v7_checkpoint_matches_our_build():
    f = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    ckpt = load_checkpoint(f)
    assert type(ckpt["model"]) is DetectionModel
    model = load_model(f)
    # yolov5n with nc=6: 1,872,157 - 74 classes x 3 anchors x (64 + 128 + 256 inputs + 1 bias) per level
    assert count_params(model) == 1_872_157 - 74 * 3 * (64 + 128 + 256 + 3) == 1_772_035
    assert count_params(load_model(f, fuse=True)) == 1_767_283  # the fixture README's figure (fused)
    assert model.names == {0: "circle", 1: "square", 2: "triangle", 3: "cross", 4: "ring", 5: "bar"}
    ours = DetectionModel(model.yaml).eval()
    ours.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 3, 320, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(x)[0], ours(x)[0]
    assert a.shape == (2, 3 * (40 * 32 + 20 * 16 + 10 * 8), 11)
    assert torch.equal(a, b)
    assert a[..., 4].max() > 0.01  # a trained model, not zeros


def test_official_v61_release_loads():
    f = shared_path("fixtures", "yolov5n-coco.pt")
    model = load_model(f)  # pickles models.yolo.Model
    assert count_params(model) == 1_872_157
    assert len(model.names) == 80 and model.names[0] == "person" and model.names[79] == "toothbrush"
    fused = load_model(f, fuse=True)
    assert count_params(fused) == 1_867_405
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(x)[0], fused(x)[0]
    assert torch.allclose(a[..., 4:], b[..., 4:], atol=1e-4)
    assert torch.allclose(a[..., :4], b[..., :4], rtol=1e-4, atol=1e-3)


def test_our_checkpoint_round_trip(tmp_path):
    m = DetectionModel("yolov5n.yaml", nc=3).eval()
    m.names = {0: "a", 1: "b", 2: "c"}
    f = tmp_path / "weights" / "last.pt"
    save_checkpoint({"model": copy.deepcopy(m).half(), "ema": None, "epoch": 1, "best_fitness": 0.5,
                     "optimizer": None, "updates": 0, "opt": {}, "date": "today"}, f)
    assert not list(f.parent.glob(".*.tmp"))  # the temp file was renamed, not left behind
    back = load_model(f)
    assert next(back.parameters()).dtype == torch.float32 and not back.training
    assert back.names == m.names
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(back(x)[0], m.half().float()(x)[0], atol=1e-3)


def test_bad_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="weights not found"):
        load_checkpoint(tmp_path / "nope.pt")
    m = DetectionModel("yolov5n.yaml")
    good = tmp_path / "good.pt"
    save_checkpoint({"model": m}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    sd = tmp_path / "state_dict.pt"
    torch.save(m.state_dict(), sd)
    with pytest.raises(UserError, match="not a YOLOv5 checkpoint"):
        load_checkpoint(sd)
