"""Channel groups: BN channels that are removed together, their scores, and the largest safe global prune percent.

A group is a run of channels with the same structure: group channel t is channel `offset + t` of every member BN
and input channel `offset + t` of every consumer conv. A member BN may appear twice in one group (a GhostBottleneck
adds one tensor onto both halves of a GhostConv's output, whose halves are tied by its depth-wise conv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:  # graph.py builds groups with make_groups; it imports this module, not the other way round
    from utils.pruning.graph import ChannelFlow


@dataclass(frozen=True)
class Member:
    """One BN of a group; its conv's output channels go with it (and its input channels too when depth-wise)."""

    bn: str  # name in model.named_modules()
    conv: str  # the Conv2d whose output this BN normalises
    offset: int  # group channel t is channel offset + t of this BN (and of its conv's outputs)
    depthwise: bool = False  # conv has groups == channels: remove its input channel offset + t as well


@dataclass
class ChannelGroup:
    """Channels 0..channels-1 of a group: each one is removed from every member and every consumer, or kept."""

    members: list[Member]
    consumers: list[tuple[str, int]]  # (Conv2d name, input-channel offset): group channel t is input offset + t
    channels: int
    residual: bool = False  # tied by a residual add

    @property
    def bns(self) -> list[str]:
        return list(dict.fromkeys(m.bn for m in self.members))

    @property
    def convs(self) -> list[str]:
        return list(dict.fromkeys(m.conv for m in self.members))


@dataclass
class GroupAnalysis:
    groups: list[ChannelGroup]  # every prunable group, residual ones included
    unprunable: dict[str, str]  # BN name -> why (some of) its channels may not be removed


def _signature(flow: ChannelFlow, elements: list[int]) -> tuple[int, tuple]:
    """(base channel, structure relative to it): channels with equal structures and adjacent bases align."""
    members = sorted(flow.owner[e] for e in elements)
    base = members[0][1]
    reads = sorted(r for e in elements for r in flow.reads[e])
    key = (tuple((bn, i - base) for bn, i in members), tuple((c, p - base) for c, p in reads))
    return base, key


def _runs(bases: list[int]) -> list[tuple[int, int]]:
    """Sorted bases split into (start, length) runs of consecutive integers."""
    runs: list[tuple[int, int]] = []
    for b in sorted(bases):
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs


def make_groups(flow: ChannelFlow, order: dict[str, int]) -> list[ChannelGroup]:
    """Gather the flow's unpinned channel classes into aligned groups, sorted by `order` (module name -> rank)."""
    by_key: dict[tuple, list[int]] = {}
    for root, elements in flow.classes().items():
        if root in flow.pinned:
            continue
        base, key = _signature(flow, elements)
        by_key.setdefault((key, root in flow.residual), []).append(base)
    groups = []
    for ((members, reads), residual), bases in by_key.items():
        for start, n in _runs(bases):
            mem = sorted({Member(bn, flow.producer[bn], start + i, bn in flow.depthwise) for bn, i in members},
                         key=lambda m: (order[m.bn], m.offset))
            cons = sorted({(c, start + p) for c, p in reads}, key=lambda r: (order[r[0]], r[1]))
            groups.append(ChannelGroup(mem, cons, n, residual))
    return sorted(groups, key=lambda g: (order[g.members[0].bn], g.members[0].offset))


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


def select_channels(scores: list[torch.Tensor], percent: float, min_channels: int = 1,
                    round_to: int = 1) -> tuple[dict[int, torch.Tensor], list[int]]:
    """Per group, the channels to keep. One global ranking of all group channels by score (ties broken by position,
    so the share removed is exactly `percent` even where scores tie); the lowest floor(percent * n) are removed,
    then each group is topped up by score to `min_channels` and rounded up to a multiple of `round_to` (never past
    its size). Returns (group -> sorted kept indices, the groups that the ranking alone left below min_channels)."""
    if not scores:
        return {}, []
    flat = torch.cat([s.float().flatten() for s in scores])
    n_remove = min(math.floor(percent * flat.numel() + 1e-6), flat.numel())
    removed = torch.zeros(flat.numel(), dtype=torch.bool)
    removed[torch.sort(flat, stable=True).indices[:n_remove]] = True
    keep, clamped = {}, []
    for k, (s, gone) in enumerate(zip(scores, removed.split([s.numel() for s in scores]))):
        n = s.numel()
        above = int((~gone).sum())
        need = min(max(above, min_channels, 1), n)
        if above < min(min_channels, n):
            clamped.append(k)
        need = min(math.ceil(need / round_to) * round_to, n)
        # the ranking's survivors first (a stable sort keeps its tie-break), then the best of the rest
        order = torch.sort(s.float(), descending=True, stable=True).indices
        keep[k] = torch.cat([order[~gone[order]], order[gone[order]]])[:need].sort().values
    return keep, clamped
