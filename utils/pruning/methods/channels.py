"""Methods that cut channel groups, and the family that cuts one global ranking of them.

`ChannelMethod.prune` is the frame they share: build the groups, score their channels (`scores`, the method's
importance), record the collapsed share, turn --flops-target into GFLOPs, let the method `select` what to keep and
cut it, then count the live channels removed. `Ranked` selects by one global threshold at --percent (or the percent
that lands on the FLOPs target, or --percent auto's): slim, l1, taylor and layer+slim differ only in their scores.
With --allocation uniform a Ranked method removes that share of every group instead, ranking channels only within
a group (how Torch-Pruning allocates by default), so the two choices, criterion and allocation, can be compared apart.
--max-layer-percent caps the global ranking: no group loses more than that share of its channels (Torch-Pruning's
max_pruning_ratio), a middle way between the two allocations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from utils.pruning.collapse import Collapse, auto_percent, collapse, live_removed
from utils.pruning.data import SearchData
from utils.pruning.flops import ChannelCost
from utils.pruning.graph import ChannelGroup, build_groups
from utils.pruning.groups import global_threshold, safe_percent
from utils.pruning.methods.base import Method, PruneResult, PruneSettings, finish, layer_table
from utils.pruning.selection import select_channels, select_uniform
from utils.pruning.surgery import prune_channels
from utils.torch_utils import model_flops


@dataclass
class Cut:
    """What a channel method decides on: `model`'s groups and their channel scores, with the GFLOPs target."""

    model: nn.Module  # the model to cut (layer+slim: after its bottlenecks were removed)
    groups: list[ChannelGroup]
    scores: list[torch.Tensor]  # per group, one score per channel (higher = more important)
    dead: Collapse
    details: dict  # what the result reports besides; a method adds its own
    cost: ChannelCost | None = None  # GFLOPs of any kept widths, with --flops-target
    target: float = 0.0  # GFLOPs to land on (--flops-target of the original model's)


@dataclass
class ChannelMethod(Method):
    """A method that removes channels of the groups graph.py builds."""

    def prepare(self, model: nn.Module, s: PruneSettings, details: dict) -> nn.Module:
        """The model whose groups are cut (layer+slim removes bottlenecks first)."""
        return model

    def scores(self, model: nn.Module, groups: list[ChannelGroup], s: PruneSettings,
               data: SearchData) -> list[torch.Tensor]:
        """One score per group channel (higher = more important)."""
        raise NotImplementedError

    def select(self, cut: Cut, s: PruneSettings, data: SearchData) -> PruneResult:
        """Choose the channels to keep, cut them (surgery) and describe the result."""
        raise NotImplementedError

    def prune(self, model: nn.Module, s: PruneSettings, data: SearchData) -> PruneResult:
        details: dict = {}
        base = self.prepare(model, s, details)
        groups = build_groups(base, s.skip_shortcut)
        scores = self.scores(base, groups, s, data)
        cut = Cut(base, groups, scores, collapse(scores), details)
        details.update(cut.dead.record())
        if s.flops_target:
            cut.cost = ChannelCost(base, groups, s.imgsz)
            full = cut.cost.total if base is model else model_flops(model, s.imgsz)  # layer+slim: the original's
            cut.target = details["target_GFLOPs"] = s.flops_target * full
        result = self.select(cut, s, data)
        result.scores = scores
        result.details["live_removed"] = live_removed(scores, result.keep, details["collapse_threshold"])
        return result

    def criterion(self, s: dict) -> list[str]:
        """report.md: how it chose the channels."""
        return []

    def choice(self, s: dict) -> list[str]:
        """The console line's parts on what it chose."""
        return []

    def report_lines(self, s: dict, before: dict, after: dict) -> list[str]:
        lines = []
        if s.get("flops_target"):
            lines.append(f"FLOPs target {s['flops_target']:g} of the original ({s['target_GFLOPs']:.3f} GFLOPs); "
                         + (f"percent {s['percent_used']:.4f} lands on it." if "percent_used" in s else ""))
        lines += self.criterion(s)
        if s.get("adaptive_bn") and not self.recalibrates:
            lines.append(f"BN statistics recomputed on {s['calib_batches']} training batches (--adaptive-bn).")
        lines.append(f"Removed {s['group_channels'] - s['group_channels_kept']} of {s['group_channels']} group "
                     f"channels ({s['removed_share']:.1%}); BN channels {before['bn_channels']} -> "
                     f"{after['bn_channels']}.")
        if "collapsed_share" in s:
            lines.append(f"Collapsed before the cut (score below {s['collapse_threshold']:.3g}, 1% of the 90th "
                         f"percentile): {s['collapsed_share']:.1%} of the group channels; live channels removed: "
                         f"{s['live_removed']}" + (" (expect a large drop until fine-tuned)." if s["live_removed"] else
                                                   " (the cut took only collapsed channels)."))
        return lines

    def decision(self, s: dict) -> str:
        safe = f" (safe maximum {s['safe_percent']:.3f})" if s["safe_percent"] == s["safe_percent"] else ""
        return ", ".join([*self.choice(s), f"{s['removed_share']:.1%} of group channels removed{safe}"])


ALLOCATIONS = ("global", "uniform")


@dataclass
class Ranked(ChannelMethod):
    """One global ranking of every group channel by `scores`, cut at a percent: the lowest-scoring go. With
    allocation "uniform", every group loses that share of its own lowest-scoring channels instead."""

    ranked: ClassVar[bool] = True

    allocation: str = "global"  # global: one ranking over every group; uniform: the same share of each group
    max_layer_percent: float = 1.0  # global: the most of its channels any one group may lose

    def check(self, s: PruneSettings) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, not {self.allocation}")
        if self.allocation == "uniform" and s.auto:
            raise ValueError("--percent auto cuts the channels that collapsed in one global ranking; it needs "
                             "--allocation global")
        if not 0 < self.max_layer_percent <= 1:
            raise ValueError(f"--max-layer-percent must be in (0, 1], the most of its channels one layer may lose; "
                             f"got {self.max_layer_percent}")
        if self.allocation == "uniform" and self.max_layer_percent < 1:
            raise ValueError("--max-layer-percent caps the global ranking; --allocation uniform already removes the "
                             "same share of every layer")
        super().check(s)

    def choose(self, scores: list[torch.Tensor], percent: float,
               s: PruneSettings) -> tuple[dict[int, torch.Tensor], list[int]]:
        """The channels to keep at `percent` by this method's allocation, and the groups clamped to min_channels."""
        if self.allocation == "uniform":
            return select_uniform(scores, percent, s.min_channels, s.round_to)
        return select_channels(scores, percent, s.min_channels, s.round_to, self.max_layer_percent)

    def select(self, cut: Cut, s: PruneSettings, data: SearchData) -> PruneResult:
        scores = cut.scores
        if cut.cost is not None:
            cut.details["percent_used"] = percent = percent_for_flops(self, scores, cut.cost, cut.target, s)
        elif s.auto:
            cut.details["percent_used"] = percent = auto_percent(cut.dead, safe_percent(scores))
        else:
            percent = s.percent
        uniform = self.allocation == "uniform"  # no global threshold; no group is ever emptied
        threshold = float("nan") if uniform else global_threshold(scores, percent) if scores else 0.0
        keep, clamped = self.choose(scores, percent, s)
        pruned = finish(prune_channels(cut.model, keep, cut.groups))
        return PruneResult(pruned, self, s, layer_table(cut.model, pruned), threshold,
                           float("nan") if uniform else safe_percent(scores), cut.groups, keep, clamped, cut.model,
                           cut.details)

    def flags(self, s: PruneSettings) -> str:
        if self.allocation == "uniform":
            return " --allocation uniform"
        return f" --max-layer-percent {self.max_layer_percent:g}" if self.max_layer_percent < 1 else ""

    def criterion(self, s: dict) -> list[str]:
        pct = s.get("percent_used", s["percent"])
        group = f"group score `{s['group_score']}`, " if hasattr(self, "group_score") else ""  # slim's family only
        rest = f"{group}skip shortcut {s['skip_shortcut']}, min channels {s['min_channels']}, round to {s['round_to']}."
        if s.get("allocation") == "uniform":
            return [f"Method `{s['method']}`, allocation uniform: every group loses the share {pct:.4g} of its "
                    f"channels, ranked within the group; {rest}"]
        cap = s.get("max_layer_percent", 1.0)
        cap = f"no layer losing more than {cap:g} of its channels (--max-layer-percent), " if cap < 1 else ""
        return [f"Method `{s['method']}`, percent {pct:.4g}, threshold {s['threshold']:.4g} (channels scoring below "
                f"it removed), {cap}{rest}",
                f"Largest safe percent (no layer emptied by the threshold alone): {s['safe_percent']:.3f}."]

    def choice(self, s: dict) -> list[str]:
        parts = []
        if "percent_used" in s:
            why = "--percent auto: the collapsed share" if s.get("auto") else "for the FLOPs target"
            parts.append(f"percent {s['percent_used']:.4f} ({why})")
        if s.get("allocation") == "uniform":
            return [*parts, "the same share of every group"]
        return [*parts, f"threshold {s['threshold']:.4g}"]


def percent_for_flops(method: Ranked, scores: list[torch.Tensor], cost: ChannelCost, target: float,
                      s: PruneSettings) -> float:
    """The smallest percent whose selection by `method` costs at most `target` GFLOPs (bisection; more removed =
    fewer FLOPs)."""
    def gflops(p: float) -> float:
        keep, _ = method.choose(scores, p, s)
        return cost.gflops([len(keep[k]) for k in range(len(scores))])

    lo, hi = 0.0, 1.0 - 1e-9
    if gflops(hi) > target:
        cap = getattr(method, "max_layer_percent", 1.0)
        most = f"the most --max-layer-percent {cap:g} allows" if cap < 1 else \
            f"every channel but --min-channels {s.min_channels}"
        raise ValueError(f"--flops-target {s.flops_target:g}: even removing {most} leaves {gflops(hi):.3g} GFLOPs "
                         f"> {target:.3g}")
    total = sum(x.numel() for x in scores)
    for _ in range(max(8, math.ceil(math.log2(total)) + 2)):  # down to one channel's worth of percent
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gflops(mid) > target else (lo, mid)
    return hi
