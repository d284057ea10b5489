"""From settings to a pruned model: groups -> importance -> selection -> surgery -> explicit-width yaml.

`prune_model(model, PruneSettings(...))` is what prune.py runs; every structured method plugs in here by giving one
score per channel of each group (`importance`), the rest (global threshold, min channels, rounding, folding, yaml)
is shared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from utils.pruning.graph import build_groups
from utils.pruning.groups import ChannelGroup, global_threshold, group_scores, safe_percent, select_channels
from utils.pruning.surgery import prune_channels
from utils.pruning.yaml_writer import model_yaml

METHODS = ("slim",)


@dataclass
class PruneSettings:
    """What prune.py's flags decide."""

    method: str = "slim"
    percent: float = 0.5  # share of the prunable channels (counted per group channel) to remove
    skip_shortcut: bool = False  # leave residual groups alone
    min_channels: int = 1  # never keep fewer channels than this in a group
    round_to: int = 1  # round each group's kept width up to a multiple of this
    group_score: str = "max"  # how a channel's gammas over the members of a group are reduced: max or mean

    def check(self) -> None:
        """ValueError with a one-line reason for settings no method can honour."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}' (known: {', '.join(METHODS)})")
        if not 0 <= self.percent < 1:
            raise ValueError(f"--percent must be in [0, 1), the share of prunable channels to remove; "
                             f"got {self.percent}")
        if self.min_channels < 1 or self.round_to < 1:
            raise ValueError("--min-channels and --round must be at least 1")
        if self.group_score not in ("max", "mean"):
            raise ValueError(f"--group-score must be max or mean, not {self.group_score}")


@dataclass
class PruneResult:
    model: nn.Module  # the pruned copy; its .yaml is the explicit-width yaml that rebuilds it
    settings: PruneSettings
    threshold: float  # channels scoring below it were removed (before min-channels and rounding)
    safe_percent: float  # the largest percent that empties no group by the threshold alone
    groups: list[ChannelGroup]
    keep: dict[int, torch.Tensor]
    clamped: list[int]  # groups kept at min_channels although every channel scored below the threshold
    layers: list[dict] = field(default_factory=list)  # per BN: name, channels before, kept

    def summary(self) -> dict:
        total = sum(g.channels for g in self.groups)
        kept = sum(len(self.keep[k]) for k in range(len(self.groups)))
        return {**asdict(self.settings), "threshold": self.threshold, "safe_percent": self.safe_percent,
                "groups": len(self.groups), "group_channels": total, "group_channels_kept": kept,
                "removed_share": 1 - kept / total if total else 0.0,
                "clamped_layers": [self.groups[k].bns[0] for k in self.clamped]}


def importance(model: nn.Module, groups: list[ChannelGroup], settings: PruneSettings) -> list[torch.Tensor]:
    """One score per group channel (higher = more important)."""
    if settings.method == "slim":
        return group_scores(model, groups, settings.group_score)
    raise ValueError(f"unknown method '{settings.method}'")


def layer_table(before: nn.Module, after: nn.Module) -> list[dict]:
    """Channels of every BN before and after: the per-layer kept/total of the report."""
    kept = {n: m.num_features for n, m in after.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return [{"name": n.removesuffix(".bn"), "channels": m.num_features, "kept": kept[n]}
            for n, m in before.named_modules() if isinstance(m, nn.BatchNorm2d) and n in kept]


def prune_model(model: nn.Module, settings: PruneSettings) -> PruneResult:
    """A pruned copy of `model` (a float DetectionModel with BatchNorms) and what was decided on the way."""
    settings.check()
    model = model.float().eval()
    groups = build_groups(model, settings.skip_shortcut)
    scores = importance(model, groups, settings)
    threshold = global_threshold(scores, settings.percent) if scores else 0.0
    keep, clamped = select_channels(scores, settings.percent, settings.min_channels, settings.round_to)
    pruned = prune_channels(model, keep, groups)
    pruned.yaml = model_yaml(pruned)
    pruned.yaml_file = "pruned.yaml"
    return PruneResult(pruned, settings, threshold, safe_percent(scores), groups, keep, clamped,
                       layer_table(model, pruned))
