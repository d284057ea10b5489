"""Unstructured pruning: the smallest conv weights of the whole model set to zero (one global L1 magnitude ranking,
torch.nn.utils.prune), made permanent. The architecture is unchanged, so the file does not shrink unless compressed
and dense kernels do not run faster: zeros are multiplied like any other number. It shows how much of a network is
redundant, and feeds sparse-kernel runtimes. `KeepZeros` (utils/hooks/keep_zeros.py) keeps the zeros through
finetune.py.
"""

from __future__ import annotations

from copy import deepcopy

import torch.nn as nn
import torch.nn.utils.prune as tprune


def conv_weights(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def zero_table(model: nn.Module) -> list[dict]:
    """Per conv: its weight count and how many are exactly zero."""
    return [{"name": n, "weights": m.weight.numel(), "zeros": int((m.weight == 0).sum())}
            for n, m in conv_weights(model).items()]


def zero_share(model: nn.Module) -> float:
    """Share of all conv weights that are exactly zero."""
    rows = zero_table(model)
    return sum(r["zeros"] for r in rows) / max(sum(r["weights"] for r in rows), 1)


def prune_weights(model: nn.Module, percent: float) -> nn.Module:
    """A float copy of `model` with the `percent` smallest-magnitude conv weights (over all convs) set to zero."""
    out = deepcopy(model).float()
    convs = list(conv_weights(out).values())
    if percent > 0:
        params = [(m, "weight") for m in convs]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=percent)
        for m, name in params:
            tprune.remove(m, name)  # weight = weight_orig * mask, the reparametrisation dropped
    return out

