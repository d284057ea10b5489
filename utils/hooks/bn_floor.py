"""Lift tiny BatchNorm input variances before fine-tuning, without changing what the model computes.

Sparse training leaves convolutions whose outputs barely vary; behind a BN such a conv is scale-invariant, so its
effective learning rate grows as its weights shrink and fine-tuning at the usual lr first throws the model off.

For each Conv2d (no bias) -> BatchNorm2d pair and each output channel c whose running variance v is below `floor`,
scale the conv's filter by s = sqrt(floor / v) and the BN's running statistics to match (mean * s, var * s^2), and
multiply gamma by sqrt(s^2 v + eps) / (s sqrt(v + eps)), which undoes the change of the eps term. In eval mode the
output is unchanged; in training the lifted channels are normalised by their own statistics again and take steps
of the usual relative size. It trades the first epochs' dip for slower learning (docs/findings.md, "Lifting tiny
variances"), so finetune.py leaves it off unless asked (`--bn-floor`).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from utils.engine import Hook, TrainState
from utils.log import LOGGER, colorstr


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) of every module with a bias-free `conv` feeding its affine `bn` (models.common.Conv and its kin;
    fused modules, whose bn is gone, are left out)."""
    pairs = []
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), m._modules.get("bn")
        if isinstance(conv, nn.Conv2d) and conv.bias is None and isinstance(bn, nn.BatchNorm2d) and bn.affine \
                and bn.track_running_stats and bn.num_features == conv.out_channels:
            pairs.append((conv, bn))
    return pairs


@torch.no_grad()
def _rescale(conv: nn.Conv2d, bn: nn.BatchNorm2d, s: torch.Tensor) -> None:
    """Multiply the conv's output channels by s and adjust bn so that its eval-mode output is unchanged."""
    var = bn.running_var.float()
    g = torch.sqrt(s**2 * var + bn.eps) / (s * torch.sqrt(var + bn.eps))
    conv.weight.mul_(s.view(-1, *[1] * (conv.weight.ndim - 1)).to(conv.weight.dtype))
    bn.weight.mul_(g.to(bn.weight.dtype))
    bn.running_mean.mul_(s.to(bn.running_mean.dtype))
    bn.running_var.mul_((s**2).to(bn.running_var.dtype))


@torch.no_grad()
def lift_bn_variance(model: nn.Module, floor: float, *also: nn.Module) -> int:
    """Rescale every conv output channel of `model` whose BN running variance is below `floor` so that it is
    `floor`, keeping the eval-mode outputs; apply the same factors to the copies in `also` (an EMA of the same
    architecture). Return the number of channels changed."""
    n = 0
    others = [conv_bn_pairs(m) for m in also]
    for i, (conv, bn) in enumerate(conv_bn_pairs(model)):
        var = bn.running_var.float().clamp(min=1e-12)
        below = var < floor * (1 - 1e-5)  # a channel lifted before may sit a rounding error under the floor
        s = torch.where(below, torch.sqrt(floor / var), torch.ones_like(var))
        lifted = int(below.sum())
        if not lifted:
            continue
        _rescale(conv, bn, s)
        for pairs in others:
            _rescale(*pairs[i], s)
        n += lifted
    return n


class BNVarianceFloor(Hook):
    """finetune.py's --bn-floor: lift the model's (and its EMA's) tiny BN variances once, before the first step."""

    def __init__(self, floor: float):
        self.floor = floor

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> BNVarianceFloor | None:
        """finetune.py's --bn-floor; None when it is 0 (or a resumed run's saved options predate it)."""
        return cls(opt.bn_floor) if getattr(opt, "bn_floor", 0) > 0 else None

    def on_train_start(self, state: TrainState) -> None:
        if state.epoch > 0:  # a resumed run was lifted when it started
            return
        n = lift_bn_variance(state.bare, self.floor, *([state.ema.ema] if state.ema is not None else []))
        total = sum(bn.num_features for _, bn in conv_bn_pairs(state.bare))
        LOGGER.info(f"{colorstr('bn-floor:')} {n}/{total} conv channels had a BN running variance below "
                    f"{self.floor:g}; rescaled to it (the model's outputs are unchanged)")
