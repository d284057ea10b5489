"""Exponential moving average of model weights, the model that is validated and saved for inference."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
import torch.nn as nn

from utils.torch_utils import de_parallel


class ModelEMA:
    """ema = d * ema + (1 - d) * model after every optimizer step, with d = decay * (1 - exp(-updates / tau)):
    the ramp lets the average follow the fast early changes instead of being held back by the random init.
    Buffers (BN running statistics) are averaged too; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.ema.requires_grad_(False)
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach().to(v.dtype), alpha=1 - d)
            else:
                v.copy_(msd[k])

    def update_attr(self, model: nn.Module, include: tuple[str, ...] = ("yaml", "nc", "hyp", "names", "stride")):
        """Copy plain attributes (class names, hyperparameters) that the saved EMA model must carry."""
        bare = de_parallel(model)
        for k in include:
            if hasattr(bare, k):
                setattr(self.ema, k, getattr(bare, k))
