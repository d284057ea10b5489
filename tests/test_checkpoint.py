"""Checkpoints: upstream YOLOv5's files load here, ours round-trip, broken files fail with one clear line."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

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
    assert [(m.f, m.i) for m in ours.model] == [(m.f, m.i) for m in model.model]  # our parser wires as upstream's did
    x = torch.rand(2, 3, 320, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(x)[0], ours(x)[0]
    assert a.shape == (2, 3 * (40 * 32 + 20 * 16 + 10 * 8), 11)
    assert torch.equal(a, b)
    assert a[..., 4].max() > 0.01  # a trained model, not zeros


def _upstream_decode(conv_out: torch.Tensor, anchors_px: torch.Tensor, stride: float) -> torch.Tensor:
    """Upstream's Detect inference written out: sigmoid, xy = (2 s - 0.5 + cell) * stride, wh = (2 s)^2 * anchor."""
    bs, _, ny, nx = conv_out.shape
    na = len(anchors_px)
    y = conv_out.view(bs, na, -1, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()  # (bs, na, ny, nx, no)
    gy, gx = torch.meshgrid(torch.arange(ny, dtype=y.dtype), torch.arange(nx, dtype=y.dtype), indexing="ij")
    cx = (y[..., 0] * 2 - 0.5 + gx) * stride
    cy = (y[..., 1] * 2 - 0.5 + gy) * stride
    w = (y[..., 2] * 2) ** 2 * anchors_px[:, 0].view(1, na, 1, 1)
    h = (y[..., 3] * 2) ** 2 * anchors_px[:, 1].view(1, na, 1, 1)
    return torch.cat((torch.stack((cx, cy, w, h), -1), y[..., 4:]), -1).view(bs, -1, y.shape[-1])


def test_upstream_checkpoint_outputs_match_formulas_written_here():
    """References that share no code with ours: the stem through torch.nn.functional, and the boxes decoded from
    Detect's conv outputs with upstream's formulas, on a non-square input (a transposed grid would show)."""
    model = load_model(shared_path("fixtures", "upstream-yolov5n-shapes.pt"))
    x = torch.rand(2, 3, 320, 256, generator=torch.Generator().manual_seed(0))
    stem = model.model[0]  # yolov5n.yaml: [-1, 1, Conv, [64, 6, 2, 2]], BN and SiLU
    with torch.no_grad():
        y = F.conv2d(x, stem.conv.weight, stride=2, padding=2)
        y = F.silu(F.batch_norm(y, stem.bn.running_mean, stem.bn.running_var, stem.bn.weight, stem.bn.bias,
                                eps=stem.bn.eps))
        assert torch.allclose(stem(x), y, atol=1e-5)
    detect = model.model[-1]
    conv_outs = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: conv_outs.append(out)) for m in detect.m]
    with torch.no_grad():
        decoded = model(x)[0]
    for h in hooks:
        h.remove()
    anchors_px = detect.anchors * detect.stride.view(-1, 1, 1)  # the checkpoint's own (AutoAnchor ran upstream)
    ref = torch.cat([_upstream_decode(o, anchors_px[i], float(detect.stride[i])) for i, o in enumerate(conv_outs)], 1)
    assert decoded.shape == ref.shape == (2, 3 * (40 * 32 + 20 * 16 + 10 * 8), 11)
    assert torch.allclose(decoded, ref, rtol=1e-5, atol=1e-4)  # pixels up to ~320: float32 rounding only


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
    assert load_checkpoint(f)["model"].model[0].conv.weight.dtype == torch.float16  # stored as upstream stores it
    back = load_model(f)
    assert next(back.parameters()).dtype == torch.float32 and not back.training
    assert back.names == m.names and back.yaml == m.yaml and torch.equal(back.stride, m.stride)
    want = m.half().float().state_dict()  # the file holds fp16, so the fp16-rounded weights come back, bit for bit
    got = back.state_dict()
    assert got.keys() == want.keys() and [k for k in want if not torch.equal(got[k], want[k])] == []


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


@pytest.mark.parametrize("when", ["creating", "writing"])
def test_ctrl_c_while_saving_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, when):
    """Ctrl-C inside the call that creates the temp file (its name not yet returned) or while writing it: the
    previous file is untouched and no temp file is left (the suite once found one after a Ctrl-C under load)."""
    import builtins

    import utils.files as files

    f = tmp_path / "best.pt"
    f.write_bytes(b"old")

    def interrupted_open(path, mode="r", *args, **kwargs):
        h = builtins.open(path, mode, *args, **kwargs)  # the file exists now
        if when == "creating":
            h.close()
            raise KeyboardInterrupt
        return h

    def write(fh):
        fh.write(b"new, half")
        if when == "writing":
            raise KeyboardInterrupt

    monkeypatch.setattr(files, "open", interrupted_open, raising=False)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(f, write)
    assert f.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
