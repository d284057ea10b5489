"""The pieces of the training recipe, each against values worked out by hand."""

import math

import pytest
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.ema import ModelEMA
from utils.engine import EarlyStopping
from utils.errors import UserError
from utils.optim import Warmup, build_optimizer, lr_lambda

HYP = {"warmup_bias_lr": 0.1, "warmup_momentum": 0.8, "momentum": 0.937}


@pytest.fixture(scope="module")
def model():
    return DetectionModel("yolov5n.yaml", nc=3)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_three_groups_decay_only_on_weights(model, name):
    opt = build_optimizer(model, name, lr=0.01, momentum=0.9, decay=5e-4)
    biases, weights, bn = (g["params"] for g in opt.param_groups)
    bn_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    bias_ids = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    assert {id(p) for p in bn} == bn_ids
    assert {id(p) for p in biases} == bias_ids
    assert len(biases) + len(weights) + len(bn) == len(list(model.parameters()))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    if name == "SGD":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    else:
        assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_unknown_optimizer_is_user_error(model):
    with pytest.raises(UserError, match="RMSprop"):
        build_optimizer(model, "RMSprop")


def test_lr_schedules_end_points():
    lin, cos = lr_lambda(0.01, 100), lr_lambda(0.01, 100, cos=True)
    assert lin(0) == 1 and lin(100) == pytest.approx(0.01) and lin(50) == pytest.approx(0.505)
    assert cos(0) == pytest.approx(1) and cos(100) == pytest.approx(0.01) and cos(50) == pytest.approx(0.505)
    assert cos(25) == pytest.approx(1 - 0.99 * (1 - math.cos(math.pi / 4)) / 2)  # half cosine, not linear
    assert cos(25) > lin(25)


def test_warmup_ramps_lr_momentum_and_accumulation():
    params = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=0.01, momentum=0.937)
    for g in opt.param_groups:
        g["initial_lr"] = 0.01
    lf = lr_lambda(0.01, 10)
    w = Warmup(100, HYP, accumulate=4, lf=lf)
    assert w.step(opt, 0, 0) == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0, 0.0])  # bias lr starts high, others at 0
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.8)
    assert w.step(opt, 50, 0) == 2  # round(1 + 3 * 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.055, 0.005, 0.005])
    assert w.step(opt, 100, 1) == 4
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * lf(1)] * 3)
    assert opt.param_groups[2]["momentum"] == pytest.approx(0.937)
    opt.param_groups[0]["lr"] = 0.123
    assert w.step(opt, 101, 1) == 4 and opt.param_groups[0]["lr"] == 0.123  # after warmup the scheduler owns lr


def test_ema_update_is_the_weighted_average():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(net, decay=0.9, tau=10)
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].num_batches_tracked += 5
    ema.update(net)
    d = 0.9 * (1 - math.exp(-1 / 10))
    after, now = ema.ema.state_dict(), net.state_dict()
    for k in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.allclose(after[k], d * before[k] + (1 - d) * now[k])
    assert after["1.num_batches_tracked"] == 5  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.ema.parameters())


def test_early_stopping_counts_epochs_without_improvement():
    s = EarlyStopping(patience=2)
    assert [s(e, f) for e, f in enumerate([0.1, 0.3, 0.2, 0.25])] == [False, False, False, True]
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))
