"""utils/bn_floor.py: lifting tiny BN variances keeps the model's outputs and restores normal-sized training steps."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import finetune
from conftest import assert_one_line_error, run_script
from models.common import Conv
from models.yolo import DetectionModel
from utils.bn_floor import BNVarianceFloor, conv_bn_pairs, lift_bn_variance
from utils.checkpoint import save_checkpoint
from utils.ema import ModelEMA


def _starved(seed: int = 0) -> tuple[DetectionModel, int]:
    """A yolov5n whose BN statistics look like a sparse-trained model's: a third of the channels barely vary.
    Returns the model and the number of channels below 0.05."""
    torch.manual_seed(seed)
    m = DetectionModel("yolov5n.yaml", nc=3)
    n = 0
    for conv, bn in conv_bn_pairs(m):
        c = bn.num_features
        bn.weight.data = torch.rand(c) * 2
        bn.bias.data = torch.randn(c) * 0.5
        bn.running_mean = torch.randn(c) * 0.1
        var = torch.rand(c) * 0.5 + 0.01
        tiny = torch.rand(c) < 0.33
        var[tiny] = 10 ** torch.empty(int(tiny.sum())).uniform_(-5, -2.5)
        bn.running_var = var
        n += int((var < 0.05).sum())
    return m.eval(), n


def test_lift_keeps_outputs_and_leaves_healthy_channels_alone():
    m, below = _starved()
    before_w = {id(conv): conv.weight.detach().clone() for conv, _ in conv_bn_pairs(m)}
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = m(x)[0]
    changed = lift_bn_variance(m, 0.05)
    assert changed == below > 100
    with torch.no_grad():
        out = m(x)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)  # boxes in pixels, scores in [0, 1]
    for conv, bn in conv_bn_pairs(m):
        assert bn.running_var.min() >= 0.05 * (1 - 1e-5)
        healthy = bn.running_var > 0.05 * (1 + 1e-5)  # above the floor now only if it was before
        assert torch.equal(conv.weight[healthy], before_w[id(conv)][healthy])
    assert lift_bn_variance(m, 0.05) == 0  # nothing left below the floor


def test_lift_shrinks_the_relative_training_step():
    """A conv whose output barely varies takes huge steps relative to its weights; lifted, ordinary ones."""
    torch.manual_seed(0)
    layer = Conv(8, 16, 3)
    layer.conv.weight.data *= 0.003
    x = torch.randn(4, 8, 16, 16)
    with torch.no_grad():  # running statistics of the starved conv, as training would have left them
        y = layer.conv(x)
        layer.bn.running_mean = y.mean((0, 2, 3))
        layer.bn.running_var = y.var((0, 2, 3))
    assert layer.bn.running_var.max() < 1e-3
    target = torch.randn(4, 16, 16, 16)

    def relative_step() -> float:
        layer.zero_grad()
        layer.train()
        ((layer(x) - target) ** 2).mean().backward()
        return (layer.conv.weight.grad.norm() / layer.conv.weight.norm()).item()

    starved = relative_step()
    assert lift_bn_variance(layer, 0.05) == 16
    lifted = relative_step()
    assert lifted < starved / 20


def test_hook_lifts_model_and_ema_alike_once():
    m, _ = _starved(1)
    ema = ModelEMA(m)
    with torch.no_grad():  # the EMA's statistics drift a little from the model's, as after a resume
        for _, bn in conv_bn_pairs(ema.ema):
            bn.running_var.mul_(1.01)
    hook = BNVarianceFloor(0.05)
    hook.on_train_start(SimpleNamespace(bare=m, ema=ema, epoch=0))
    for (c1, _), (c2, _) in zip(conv_bn_pairs(m), conv_bn_pairs(ema.ema)):
        torch.testing.assert_close(c1.weight, c2.weight)  # the model's factors, applied to both
    w = [c.weight.clone() for c, _ in conv_bn_pairs(m)]
    m2, _ = _starved(2)
    hook.on_train_start(SimpleNamespace(bare=m2, ema=None, epoch=3))  # a resumed run: already lifted
    assert lift_bn_variance(m2, 0.05) > 0
    assert all(torch.equal(a, c.weight) for a, (c, _) in zip(w, conv_bn_pairs(m)))


def test_finetune_bn_floor_option(tmp_path):
    w = tmp_path / "m.pt"
    save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=2).half(), "epoch": -1}, w)
    opt = finetune.parse_opt(["--weights", str(w), "--bn-floor", "0.05"])
    assert [h.floor for h in finetune.hooks(opt) if isinstance(h, BNVarianceFloor)] == [0.05]
    opt = finetune.parse_opt(["--weights", str(w)])
    assert opt.bn_floor == 0 and not any(isinstance(h, BNVarianceFloor) for h in finetune.hooks(opt))
    assert_one_line_error(run_script("finetune.py", "--weights", str(w), "--bn-floor", "-1"), "--bn-floor")
