"""From settings to a pruned model: groups -> importance -> selection -> surgery -> explicit-width yaml.

`prune_model(model, PruneSettings(...))` is what prune.py runs. Structured methods give one score per channel of each
group (`importance`: slim = |gamma|, l1 = filter norms) and share the rest (global ranking, min channels, rounding,
folding, yaml); a FLOPs target picks the percent that lands on it. EagleEye searches widths instead of ranking;
layer removes residual bottlenecks (then slims with layer+slim); unstructured zeroes weights and keeps the shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from utils.pruning import eagleeye
from utils.pruning.flops import ChannelCost
from utils.pruning.graph import build_groups
from utils.pruning.groups import ChannelGroup, global_threshold, group_scores, safe_percent, select_channels
from utils.pruning.l1 import l1_scores
from utils.pruning.layer import remove_blocks
from utils.pruning.surgery import prune_channels
from utils.pruning.unstructured import prune_weights, zero_table
from utils.pruning.yaml_writer import model_yaml
from utils.torch_utils import model_flops

METHODS = ("slim", "l1", "eagleeye", "layer", "layer+slim", "unstructured")
NEEDS_DATA = ("eagleeye",)


@dataclass
class PruneSettings:
    """What prune.py's flags decide."""

    method: str = "slim"
    percent: float = 0.5  # share of the prunable channels (counted per group channel) to remove; unstructured: weights
    skip_shortcut: bool = False  # leave residual groups alone
    min_channels: int = 1  # never keep fewer channels than this in a group
    round_to: int = 1  # round each group's kept width up to a multiple of this
    group_score: str = "max"  # how a channel's gammas over the members of a group are reduced: max or mean
    flops_target: float = 0.0  # > 0: keep this share of the original GFLOPs (replaces percent; eagleeye needs it)
    layers: int = 0  # layer, layer+slim: residual bottlenecks to remove
    candidates: int = 20  # eagleeye: sub-nets drawn
    calib_batches: int = 8  # eagleeye: training batches for adaptive BN
    seed: int = 0  # eagleeye: candidate draws
    imgsz: int = 640  # the size GFLOPs are counted at

    def check(self) -> None:
        """ValueError with a one-line reason for settings the method cannot honour."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}' (known: {', '.join(METHODS)})")
        if not 0 <= self.percent < 1:
            raise ValueError(f"--percent must be in [0, 1), the share of prunable channels to remove; "
                             f"got {self.percent}")
        if not 0 <= self.flops_target < 1:
            raise ValueError(f"--flops-target must be in (0, 1), the share of GFLOPs to keep; got {self.flops_target}")
        if self.min_channels < 1 or self.round_to < 1:
            raise ValueError("--min-channels and --round must be at least 1")
        if self.group_score not in ("max", "mean"):
            raise ValueError(f"--group-score must be max or mean, not {self.group_score}")
        if self.method == "eagleeye" and not self.flops_target:
            raise ValueError("--method eagleeye needs --flops-target F (the share of GFLOPs to keep, e.g. 0.5)")
        if self.method == "eagleeye" and (self.candidates < 1 or self.calib_batches < 1):
            raise ValueError("--candidates and --calib-batches must be at least 1")
        if self.method.startswith("layer") and self.layers < 1:
            raise ValueError(f"--method {self.method} needs --layers N >= 1 (residual bottlenecks to remove)")
        if self.method in ("layer", "unstructured") and self.flops_target:
            raise ValueError(f"--method {self.method} takes no --flops-target ("
                             f"{'its FLOPs follow from --layers' if self.method == 'layer' else 'zeros cost FLOPs'})")


@dataclass
class PruneResult:
    model: nn.Module  # the pruned copy; its .yaml is the explicit-width yaml that rebuilds it
    settings: PruneSettings
    layers: list[dict]  # per BN: name, channels, kept (unstructured: per conv: name, weights, zeros)
    threshold: float = float("nan")  # channels scoring below it were removed (before min-channels and rounding)
    safe_percent: float = float("nan")  # the largest percent that empties no group by the threshold alone
    groups: list[ChannelGroup] = field(default_factory=list)  # of `base`
    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    clamped: list[int] = field(default_factory=list)  # groups kept at min_channels though every channel was below
    base: nn.Module | None = None  # the model the groups and keep refer to (after layer removal, if any)
    details: dict = field(default_factory=dict)  # what the method reports besides (candidates, removed blocks, ...)

    def summary(self) -> dict:
        s = {**asdict(self.settings), **self.details}
        if self.groups:
            total = sum(g.channels for g in self.groups)
            kept = sum(len(self.keep[k]) for k in range(len(self.groups)))
            s.update({"threshold": self.threshold, "safe_percent": self.safe_percent, "groups": len(self.groups),
                      "group_channels": total, "group_channels_kept": kept, "removed_share": 1 - kept / total,
                      "clamped_layers": [self.groups[k].bns[0] for k in self.clamped]})
        return s


def importance(model: nn.Module, groups: list[ChannelGroup], settings: PruneSettings) -> list[torch.Tensor]:
    """One score per group channel (higher = more important)."""
    if settings.method.endswith("slim"):
        return group_scores(model, groups, settings.group_score)
    if settings.method in ("l1", "eagleeye"):
        return l1_scores(model, groups)
    raise ValueError(f"method '{settings.method}' has no channel importance")


def layer_table(before: nn.Module, after: nn.Module) -> list[dict]:
    """Channels of every BN before and after: the per-layer kept/total of the report."""
    kept = {n: m.num_features for n, m in after.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return [{"name": n.removesuffix(".bn"), "channels": m.num_features, "kept": kept[n]}
            for n, m in before.named_modules() if isinstance(m, nn.BatchNorm2d) and n in kept]


def percent_for_flops(scores: list[torch.Tensor], cost: ChannelCost, target: float, settings: PruneSettings) -> float:
    """The smallest percent whose selection costs at most `target` GFLOPs (bisection; more removed = fewer FLOPs)."""
    def gflops(p: float) -> float:
        keep, _ = select_channels(scores, p, settings.min_channels, settings.round_to)
        return cost.gflops([len(keep[k]) for k in range(len(scores))])

    lo, hi = 0.0, 1.0 - 1e-9
    if gflops(hi) > target:
        raise ValueError(f"--flops-target {settings.flops_target:g}: even removing every channel but "
                         f"--min-channels {settings.min_channels} leaves {gflops(hi):.3g} GFLOPs > {target:.3g}")
    total = sum(s.numel() for s in scores)
    for _ in range(max(8, math.ceil(math.log2(total)) + 2)):  # down to one channel's worth of percent
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gflops(mid) > target else (lo, mid)
    return hi


def _finish(pruned: nn.Module) -> nn.Module:
    pruned.yaml = model_yaml(pruned)
    pruned.yaml_file = "pruned.yaml"
    return pruned


def prune_model(model: nn.Module, settings: PruneSettings, calib: Sequence[torch.Tensor] = (),
                score: Callable[[nn.Module], float] | None = None) -> PruneResult:
    """A pruned copy of `model` (a float DetectionModel with BatchNorms) and what was decided on the way.

    eagleeye also needs `calib` (image batches for adaptive BN) and `score` (a sub-net -> mAP50 on held-out data)."""
    settings.check()
    model = model.float().eval()
    if settings.method == "unstructured":
        pruned = _finish(prune_weights(model, settings.percent))
        table = zero_table(pruned)
        zeros, weights = sum(r["zeros"] for r in table), sum(r["weights"] for r in table)
        return PruneResult(pruned, settings, table, details={"zero_share": zeros / weights, "zeros": zeros,
                                                             "conv_weights": weights})
    details: dict = {}
    base = model
    if settings.method.startswith("layer"):
        base, gone = remove_blocks(model, settings.layers)
        details["removed_blocks"] = [{"name": b.name, "score": b.score} for b in gone]
        if settings.method == "layer":
            return PruneResult(_finish(base), settings, layer_table(model, base), base=base, details=details)
    groups = build_groups(base, settings.skip_shortcut)
    scores = importance(base, groups, settings)
    if settings.flops_target:
        cost = ChannelCost(base, groups, settings.imgsz)
        full = cost.total if base is model else model_flops(model, settings.imgsz)  # layer+slim: the original's
        target = settings.flops_target * full
        details["target_GFLOPs"] = target
        if settings.method == "eagleeye":
            if score is None or not calib:
                raise ValueError("--method eagleeye needs --data: calibration batches and held-out images to score")
            pruned, cands, best = eagleeye.search(base, groups, scores, cost, target, settings.candidates, calib,
                                                  score, settings.seed, settings.min_channels, settings.round_to)
            keep = eagleeye.keep_top(scores, cands[best].kept)
            details.update({"candidates": [c.record() for c in cands], "best": best,
                            "adaptive_bn_gain": eagleeye.mean_gain(cands)})
            return PruneResult(_finish(pruned), settings, layer_table(base, pruned), groups=groups, keep=keep,
                               base=base, details=details)
        details["percent_used"] = percent = percent_for_flops(scores, cost, target, settings)
    else:
        percent = settings.percent
    threshold = global_threshold(scores, percent) if scores else 0.0
    keep, clamped = select_channels(scores, percent, settings.min_channels, settings.round_to)
    pruned = _finish(prune_channels(base, keep, groups))
    return PruneResult(pruned, settings, layer_table(base, pruned), threshold, safe_percent(scores), groups, keep,
                       clamped, base, details)
