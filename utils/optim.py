"""Optimizer, learning-rate schedule and warmup of YOLOv5's recipe."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from utils.errors import UserError
from utils.log import LOGGER, colorstr


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    decay: float = 5e-4) -> torch.optim.Optimizer:
    """Three parameter groups, in upstream's order so that its optimizer states load here:
    0 biases (no decay), 1 conv/linear weights (decay), 2 normalisation weights (no decay: decaying BN gamma
    would act as an unasked-for sparsity penalty)."""
    biases, weights, norm_weights = [], [], []
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias":
                biases.append(p)
            elif pname == "weight" and isinstance(module, norm_types):
                norm_weights.append(p)
            else:
                weights.append(p)
    if name == "SGD":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        opt = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise UserError(f"--optimizer {name} is not supported (SGD, Adam or AdamW)")
    opt.add_param_group({"params": weights, "weight_decay": decay})
    opt.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    LOGGER.info(f"{colorstr('optimizer:')} {name}(lr={lr}) with parameter groups {len(norm_weights)} "
                f"weight(decay=0.0), {len(weights)} weight(decay={decay}), {len(biases)} bias")
    return opt


def lr_lambda(lrf: float, epochs: int, cos: bool = False) -> Callable[[int], float]:
    """Multiplier of lr0 at an epoch: linear from 1 to lrf, or a half cosine between them."""
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


class Warmup:
    """Per-iteration warmup over the first `n` optimizer iterations: learning rates rise from 0 (biases fall from
    warmup_bias_lr) to the scheduled value, momentum rises from warmup_momentum, and gradient accumulation grows
    from 1 batch to the nominal batch size."""

    def __init__(self, n: int, hyp: dict, accumulate: int, lf: Callable[[int], float]):
        self.n, self.hyp, self.accumulate, self.lf = n, hyp, accumulate, lf

    def step(self, optimizer: torch.optim.Optimizer, ni: int, epoch: int) -> int:
        """Set the groups' lr (and momentum) for global iteration ni; return the accumulation count to use."""
        if ni > self.n:
            return self.accumulate
        xi = [0, self.n]
        for j, g in enumerate(optimizer.param_groups):
            start = self.hyp["warmup_bias_lr"] if j == 0 else 0.0
            g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * self.lf(epoch)]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(ni, xi, [self.hyp["warmup_momentum"], self.hyp["momentum"]]))
        return max(1, int(np.interp(ni, xi, [1, self.accumulate]).round()))
