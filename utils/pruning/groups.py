"""Scores over channel groups and what one global cut of them does: |gamma| per group channel, the threshold at a
percent, and the largest percent that empties no group. The stage after graph.py (which builds the groups).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from utils.pruning.graph import ChannelGroup


def group_scores(model: nn.Module, groups: list[ChannelGroup], reduce: str = "max") -> list[torch.Tensor]:
    """Per group, each channel's |gamma| reduced over the group's members ('max' or 'mean')."""
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', not {reduce!r}")
    modules = dict(model.named_modules())
    scores = []
    for g in groups:
        gammas = torch.stack([modules[m.bn].weight.detach()[m.offset:m.offset + g.channels].abs() for m in g.members])
        scores.append(gammas.amax(0) if reduce == "max" else gammas.mean(0))
    return scores


def global_threshold(scores: list[torch.Tensor], percent: float) -> float:
    """The score at quantile `percent` of all channels; channels scoring strictly below it are the ones to remove."""
    s = torch.cat([x.float().flatten() for x in scores]).sort().values
    k = min(math.floor(percent * len(s) + 1e-6), len(s) - 1)  # 1e-6: percent * n lands a hair under an integer
    return s[k].item()


def safe_prune_percent(model: nn.Module, groups: list[ChannelGroup], reduce: str = "max") -> float:
    """The largest percent whose `global_threshold` empties no group: the share of channels scoring below the
    smallest of the groups' best scores."""
    return safe_percent(group_scores(model, groups, reduce))


def safe_percent(scores: list[torch.Tensor]) -> float:
    """The largest percent whose `global_threshold` over these per-group scores empties no group."""
    if not scores:
        return 0.0
    limit = min(s.max() for s in scores)
    below = sum(int((s < limit).sum()) for s in scores)
    return below / sum(s.numel() for s in scores)
