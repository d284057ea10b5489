"""Layer pruning: remove whole residual bottlenecks from C3 blocks, the ones whose BatchNorm gammas are smallest.

A residual bottleneck computes x + f(x); without it the block passes x on, so removing one never breaks the channel
flow (its input and output widths are equal by construction). Its score is the mean |gamma| over every BN inside it:
after sparse training a bottleneck whose gammas all collapsed adds almost nothing but a constant. Depth shrinks, so
unlike channel pruning this cuts sequential latency. The block's yaml repeat count becomes the number it keeps.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn as nn

from models.common import C3, Bottleneck, GhostBottleneck


@dataclass(frozen=True)
class Block:
    name: str  # model.<layer>.m.<j>
    layer: int
    index: int  # position in the C3's m
    score: float  # mean |gamma| of its BNs


def _residual(b: nn.Module) -> bool:
    if isinstance(b, Bottleneck):
        return b.add
    return isinstance(b, GhostBottleneck) and isinstance(b.shortcut, nn.Identity)


def residual_blocks(model: nn.Module) -> list[Block]:
    """Every residual bottleneck inside a C3 (C3Ghost too) of model.model, in model order."""
    blocks = []
    for i, layer in enumerate(model.model):
        if not isinstance(layer, C3):
            continue
        for j, b in enumerate(layer.m):
            if _residual(b):
                gammas = torch.cat([m.weight.detach().abs().flatten().float().cpu()
                                    for m in b.modules() if isinstance(m, nn.BatchNorm2d)])
                blocks.append(Block(f"model.{i}.m.{j}", i, j, gammas.mean().item()))
    return blocks


def remove_blocks(model: nn.Module, n: int) -> tuple[nn.Module, list[Block]]:
    """A deep copy of `model` without the n residual bottlenecks of lowest score (ties in model order), and the
    removed blocks. ValueError if the model has fewer than n."""
    blocks = residual_blocks(model)
    if n > len(blocks):
        raise ValueError(f"--layers {n}: the model has only {len(blocks)} residual bottlenecks inside C3 blocks")
    gone = sorted(blocks, key=lambda b: b.score)[:n]
    out = deepcopy(model)
    for i in sorted({b.layer for b in gone}):
        c3 = out.model[i]
        drop = {b.index for b in gone if b.layer == i}
        c3.m = nn.Sequential(*[b for j, b in enumerate(c3.m) if j not in drop])
        c3.np = sum(p.numel() for p in c3.parameters())
    return out, sorted(gone, key=lambda b: (b.layer, b.index))
