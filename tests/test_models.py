"""Model yamls, the parser, Detect, fusing: counts and outputs that upstream YOLOv5 defines."""

from __future__ import annotations

import copy

import pytest
import torch

from models.yolo import Detect, DetectionModel, Model
from utils.errors import UserError
from utils.torch_utils import count_params, model_flops

# upstream YOLOv5's parameter counts (80 classes) and GFLOPs at 640 (thop MACs x 2)
EXPECTED = {
    "yolov5n": (1_872_157, 4.6),
    "yolov5s": (7_235_389, 16.6),
    "yolov5m": (21_190_557, 49.2),
    "yolov5l": (46_563_709, 109.6),
    "yolov5x": (86_749_405, 206.3),
    "yolov5s-ghost": (3_897_605, 8.9),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_yaml_builds_with_upstream_counts(name):
    m = DetectionModel(f"{name}.yaml")
    params, gflops = EXPECTED[name]
    assert count_params(m) == params
    assert model_flops(m, 640) == pytest.approx(gflops, rel=0.01)
    assert m.stride.tolist() == [8.0, 16.0, 32.0]


@pytest.mark.parametrize("imgsz", [320, 640])
def test_forward_shapes(imgsz):
    m = DetectionModel("yolov5n.yaml", nc=6)
    x = torch.zeros(2, 3, imgsz, imgsz)
    train_out = m.train()(x)
    assert [tuple(t.shape) for t in train_out] == [(2, 3, imgsz // s, imgsz // s, 11) for s in (8, 16, 32)]
    pred, feats = m.eval()(x)
    n = 3 * sum((imgsz // s) ** 2 for s in (8, 16, 32))
    assert pred.shape == (2, n, 11)
    # rectangular input: grids follow the shape
    assert m(torch.zeros(1, 3, imgsz, imgsz // 2))[0].shape == (1, n // 2, 11)


def _randomize_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5s-ghost.yaml"])
def test_fused_matches_unfused(cfg):
    m = DetectionModel(cfg).eval()
    _randomize_bn(m)
    fused = copy.deepcopy(m).fuse()
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fused.modules())
    assert count_params(fused) < count_params(m)
    x = torch.rand(1, 3, 320, 256)
    with torch.no_grad():
        a, b = m(x)[0], fused(x)[0]
    assert torch.allclose(a[..., 4:], b[..., 4:], atol=1e-4)  # objectness and class scores
    assert torch.allclose(a[..., :4], b[..., :4], rtol=1e-4, atol=1e-3)  # boxes, in pixels


def test_nc_and_anchor_overrides():
    anchors = [[12, 16, 19, 36, 40, 28], [36, 75, 76, 55, 72, 146], [142, 110, 192, 243, 459, 401]]
    m = DetectionModel("yolov5n.yaml", nc=3, anchors=anchors)
    d = m.model[-1]
    assert isinstance(d, Detect) and d.nc == 3 and d.no == 8
    assert d.m[0].out_channels == 3 * 8
    # anchors are stored in units of each level's stride
    assert torch.allclose(d.anchors * d.stride.view(-1, 1, 1), torch.tensor(anchors, dtype=torch.float).view(3, 3, 2))
    assert m.names == {0: "0", 1: "1", 2: "2"}


def test_detect_bias_priors():
    m = DetectionModel("yolov5n.yaml", nc=80)
    d = m.model[-1]
    b = d.m[0].bias.view(d.na, -1)  # stride 8 level
    init = 1 / d.m[0].in_channels ** 0.5  # PyTorch's default bias init is uniform in +-1/sqrt(fan_in)
    # objectness prior 8 objects per 640 image: log(8 / (640/8)^2); class prior log(0.6 / (nc - 0.99999))
    assert torch.allclose(b[:, 4], torch.full((3,), -6.6846), atol=init)
    assert torch.allclose(b[:, 5:].mean(), torch.tensor(-4.8803), atol=0.02)


def test_old_focus_spp_yaml_builds():
    d = {"nc": 4, "depth_multiple": 0.33, "width_multiple": 0.25,
         "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
         "backbone": [[-1, 1, "Focus", [64, 3]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                      [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "Conv", [512, 3, 2]], [-1, 1, "SPP", [512, [5, 9, 13]]]],
         "head": [[-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 3], 1, "Concat", [1]],
                  [-1, 1, "C3", [256, False]], [-1, 1, "Conv", [256, 3, 2]], [[-1, 5], 1, "Concat", [1]],
                  [-1, 1, "C3", [512, False]], [-1, 1, "Conv", [512, 3, 2]],
                  [[8, 11, 12], 1, "Detect", ["nc", "anchors"]]]}
    m = DetectionModel(d).eval()
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    assert m(torch.zeros(1, 3, 64, 64))[0].shape == (1, 3 * (64 + 16 + 4), 9)


def test_unknown_module_is_a_user_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text((__import__("models.yolo").yolo.MODELS_DIR / "yolov5n.yaml").read_text().replace("SPPF", "SPPX"))
    with pytest.raises(UserError, match="unknown module 'SPPX'"):
        DetectionModel(f)
    with pytest.raises(UserError, match="model yaml not found"):
        DetectionModel("yolov9z.yaml")


def test_model_alias_and_yaml_round_trip():
    assert Model is DetectionModel
    m = DetectionModel("yolov5s.yaml", nc=5)
    rebuilt = DetectionModel(m.yaml)
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    assert count_params(rebuilt) == count_params(m)
