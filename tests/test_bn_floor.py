"""utils/hooks/bn_floor.py: lifting tiny BN variances keeps the model's outputs and restores normal-sized
training steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import finetune
from conftest import assert_one_line_error, run_script
from models.common import Conv
from models.yolo import DetectionModel
from utils.checkpoint import save_checkpoint
from utils.ema import ModelEMA
from utils.hooks.bn_floor import BNVarianceFloor, conv_bn_pairs, lift_bn_variance


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small convs run faster on one thread
FLOOR = 0.05


def _starved(seed: int = 0) -> tuple[DetectionModel, int]:
    """A yolov5n in the state sparse training leaves: a third of each layer's filters shrunk 300x, so their outputs
    barely vary, and BN running statistics measured on a batch (random ones would blow activations up to 1e30
    and saturate every score, leaving nothing to compare). Returns the model and its channels below FLOOR."""
    torch.manual_seed(seed)
    m = DetectionModel("yolov5n.yaml", nc=3)
    for conv, bn in conv_bn_pairs(m):
        c = bn.num_features
        bn.weight.data = torch.rand(c) * 1.5 + 0.25
        bn.bias.data = torch.randn(c) * 0.5
        conv.weight.data[torch.rand(c) < 0.33] *= 0.003
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch sets the statistics to that batch's
    with torch.no_grad():
        m.train()(torch.rand(4, 3, 64, 64))
    for _, bn in conv_bn_pairs(m):
        bn.momentum = 0.03
    return m.eval(), sum(int((bn.running_var < FLOOR).sum()) for _, bn in conv_bn_pairs(m))


def _raw(m: DetectionModel, x: torch.Tensor) -> torch.Tensor:
    """Detect's logits before the sigmoid: decoded scores of this random model saturate at 0 and 1."""
    with torch.no_grad():
        return torch.cat([r.flatten() for r in m(x)[1]])


# The lift is exact algebra; float32 rounds s * w and the division by s in BN differently (measured: 9e-4 on
# logits up to 135, under 1e-5 relative). 1e-4 allows 10x that; dropping gamma's eps correction moves them by >1.
RTOL, ATOL = 1e-4, 1e-3


def test_lift_keeps_outputs_and_leaves_healthy_channels_alone():
    m, below = _starved()
    before = {id(conv): (conv.weight.clone(), bn.running_var.clone()) for conv, bn in conv_bn_pairs(m)}
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    ref = _raw(m, x)
    changed = lift_bn_variance(m, FLOOR)
    assert changed == below > 1000  # 1,895 of 4,752 here: the shrunk third and some narrow healthy ones
    torch.testing.assert_close(_raw(m, x), ref, rtol=RTOL, atol=ATOL)
    for conv, bn in conv_bn_pairs(m):
        w0, v0 = before[id(conv)]
        low = v0 < FLOOR
        assert torch.equal(conv.weight[~low], w0[~low]) and torch.equal(bn.running_var[~low], v0[~low])
        # each starved filter scaled by sqrt(floor / v) so its variance is the floor (the docstring's s)
        s = torch.sqrt(FLOOR / v0[low]).view(-1, 1, 1, 1)
        torch.testing.assert_close(conv.weight[low], w0[low] * s)
        torch.testing.assert_close(bn.running_var[low], torch.full_like(v0[low], FLOOR))
    assert lift_bn_variance(m, FLOOR) == 0  # nothing left below the floor


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
    s2 = FLOOR / layer.bn.running_var  # the lift's per-channel s squared
    target = torch.randn(4, 16, 16, 16)

    def relative_step() -> float:
        layer.zero_grad()
        layer.train()
        ((layer(x) - target) ** 2).mean().backward()
        return (layer.conv.weight.grad.norm() / layer.conv.weight.norm()).item()

    starved = relative_step()
    assert lift_bn_variance(layer, FLOOR) == 16
    lifted = relative_step()
    # BN in training makes the loss invariant to each filter's scale: its gradient scales with 1/s and the
    # relative step with 1/s^2, so the ratio lies near min..max s^2 (14,000..23,000 here; measured 22,900).
    # Half the smallest s^2 leaves room for the eps term, which breaks the invariance of the starved layer.
    assert starved / lifted > s2.min().item() / 2


def test_hook_lifts_model_and_ema_alike_once(log_lines):
    m, below = _starved(1)
    ema = ModelEMA(m)
    with torch.no_grad():  # the EMA's statistics drift a little from the model's, as after a resume
        for _, bn in conv_bn_pairs(ema.ema):
            bn.running_var.mul_(1.01)
    w0 = [c.weight.clone() for c, _ in conv_bn_pairs(m)]
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    ref = _raw(m, x)
    BNVarianceFloor(FLOOR).on_train_start(SimpleNamespace(bare=m, ema=ema, epoch=0))
    changed = sum(int((a != c.weight).flatten(1).any(1).sum()) for a, (c, _) in zip(w0, conv_bn_pairs(m)))
    assert changed == below > 1000  # exactly the starved filters were rescaled
    assert lift_bn_variance(m, FLOOR) == 0
    torch.testing.assert_close(_raw(m, x), ref, rtol=RTOL, atol=ATOL)
    assert any("bn-floor" in line and f" {below}/" in line for line in log_lines)
    for (c1, b1), (c2, b2) in zip(conv_bn_pairs(m), conv_bn_pairs(ema.ema)):
        torch.testing.assert_close(c2.weight, c1.weight)  # the model's factors, applied to both
        # the EMA keeps its 1.01x drift: lifted by its own statistics, its lifted channels would sit at the floor
        torch.testing.assert_close(b2.running_var, b1.running_var * 1.01)
    m2, _ = _starved(2)
    w2 = [c.weight.clone() for c, _ in conv_bn_pairs(m2)]
    BNVarianceFloor(FLOOR).on_train_start(SimpleNamespace(bare=m2, ema=None, epoch=3))  # resumed: already lifted
    assert all(torch.equal(a, c.weight) for a, (c, _) in zip(w2, conv_bn_pairs(m2)))


def test_finetune_bn_floor_option(tmp_path):
    w = tmp_path / "m.pt"
    save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=2).half(), "epoch": -1}, w)
    opt = finetune.parse_opt(["--weights", str(w), "--bn-floor", "0.05"])
    assert [h.floor for h in finetune.hooks(opt) if isinstance(h, BNVarianceFloor)] == [0.05]
    opt = finetune.parse_opt(["--weights", str(w)])
    assert opt.bn_floor == 0 and not any(isinstance(h, BNVarianceFloor) for h in finetune.hooks(opt))
    assert_one_line_error(run_script("finetune.py", "--weights", str(w), "--bn-floor", "-1"), "--bn-floor")
