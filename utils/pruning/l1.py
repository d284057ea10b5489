"""L1-norm filter importance (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): the sparsity-free
baseline. A channel is worth the L1 norm of the filters that produce it, summed over the convs of its group.

Li et al. rank filters within each layer. One global ranking over layers of different fan-in would compare norms of
different scales (a 3x3 conv over 256 inputs has larger filters than a 1x1 over 16), so each group's norms are divided
by their mean: the global threshold then cuts every group where its filters are weakest relative to its own.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from utils.pruning.graph import ChannelGroup


def filter_norms(model: nn.Module, groups: list[ChannelGroup]) -> list[torch.Tensor]:
    """Per group, each channel's filter L1 norm summed over the group's member convs (not normalised)."""
    modules = dict(model.named_modules())
    out = []
    for g in groups:
        total = torch.zeros(g.channels)
        for m in g.members:
            w = modules[m.conv].weight.detach().float().cpu()[m.offset:m.offset + g.channels]
            total += w.abs().flatten(1).sum(1)
        out.append(total)
    return out


def l1_scores(model: nn.Module, groups: list[ChannelGroup]) -> list[torch.Tensor]:
    """Per group, each channel's filter L1 norm over the group's mean norm (1.0 = an average filter of its group)."""
    return [s / s.mean() if s.mean() > 0 else torch.ones_like(s) for s in filter_norms(model, groups)]
