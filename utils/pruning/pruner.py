"""From settings to a pruned model: groups -> importance -> selection -> surgery -> explicit-width yaml.

`prune_model(model, PruneSettings(...))` is what prune.py runs. Structured methods give one score per channel of each
group (`importance`: slim = |gamma|, l1 = filter norms, taylor = first-order loss change) and share the rest (global
ranking, min channels, rounding, folding, yaml); a FLOPs target picks the percent that lands on it. EagleEye searches
widths instead of ranking; sensitivity cuts each layer by the ratio its own curve allows; layer removes residual
bottlenecks (then slims with layer+slim); unstructured zeroes weights and keeps the shapes. Methods that learn from
data (eagleeye, taylor, sensitivity, --adaptive-bn) take a SearchData built from the training split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from utils.pruning import eagleeye, sensitivity
from utils.pruning.collapse import auto_percent, collapse, live_removed
from utils.pruning.flops import ChannelCost
from utils.pruning.graph import build_groups
from utils.pruning.groups import ChannelGroup, global_threshold, group_scores, safe_percent, select_channels
from utils.pruning.l1 import l1_scores
from utils.pruning.layer import remove_blocks
from utils.pruning.sensitivity import Curve
from utils.pruning.taylor import taylor_scores
from utils.pruning.surgery import prune_channels
from utils.pruning.unstructured import prune_weights, zero_table
from utils.pruning.yaml_writer import model_yaml
from utils.torch_utils import model_flops, recalibrate_bn

METHODS = ("slim", "l1", "taylor", "eagleeye", "sensitivity", "layer", "layer+slim", "unstructured")
NEEDS_DATA = ("eagleeye", "taylor", "sensitivity")
RANKED = ("slim", "l1", "taylor", "layer+slim")  # one global ranking cut by --percent (or auto)


@dataclass
class SearchData:
    """What the data-driven methods use, drawn from the training split (prune.py's search_data)."""

    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()  # (images in 0..1, targets): adaptive BN, taylor
    score: Callable[[nn.Module], float] | None = None  # a model -> mAP50 on held-out training images
    loss: Callable[[nn.Module], Callable] | None = None  # model -> its loss fn: (model output, targets) -> scalar
    curves: tuple[float, list[Curve]] | None = None  # a finished sensitivity analysis to reuse (base score, curves)
    held: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()  # held-out (images, targets): the sensitivity loss score
    sensitivity_score: str = "loss"  # what the sensitivity analysis scores: "loss" (held) or "map" (score)
    sensitivity_calib: int = 0  # > 0: the loss analysis recalibrates BN on only this many of the batches

    @property
    def images(self) -> list[torch.Tensor]:
        return [b[0] for b in self.batches]

    def need(self, flag: str, *what: str) -> None:
        """ValueError naming `flag` (e.g. "--method taylor") when any of the fields `what` is missing."""
        missing = {"batches": not self.batches, "score": self.score is None, "loss": self.loss is None,
                   "held": not self.held}
        if any(missing[w] for w in what):
            raise ValueError(f"{flag} needs --data (training batches and held-out images)")


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
    max_drop: float = 0.0  # sensitivity: what each layer alone may cost (Curve.drops: loss increase or mAP50 lost)
    ratios: tuple[float, ...] = sensitivity.RATIOS  # sensitivity: the shares of a layer tried
    adaptive_bn: bool = False  # recompute the pruned model's BN statistics on the calibration batches
    auto: bool = False  # --percent auto: cut the collapsed share (capped by the layer-emptying limit)

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
        if self.method == "eagleeye" and self.candidates < 1:
            raise ValueError("--candidates must be at least 1")
        if self.calib_batches < 1:
            raise ValueError("--calib-batches must be at least 1")
        if self.method == "sensitivity" and not (self.max_drop > 0) ^ bool(self.flops_target):
            raise ValueError("--method sensitivity needs one of --max-drop X (what each layer alone may cost: the "
                             "relative held-out loss increase, e.g. 0.05, or with --sensitivity-score map the mAP50 "
                             "lost, e.g. 0.02) or --flops-target F")
        if not self.ratios or not all(0 < r < 1 for r in self.ratios) or list(self.ratios) != sorted(set(self.ratios)):
            raise ValueError(f"--ratios must be increasing shares in (0, 1); got {' '.join(map(str, self.ratios))}")
        if self.auto and (self.method not in RANKED or self.flops_target):
            raise ValueError(f"--percent auto cuts the channels that collapsed in one global ranking: methods "
                             f"{', '.join(RANKED)}, without --flops-target")
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
    curves: tuple[float, list[Curve]] | None = None  # sensitivity: (unpruned score, per-layer curves) it used
    scores: list[torch.Tensor] = field(default_factory=list)  # per group, the channel scores the method ranked

    def summary(self) -> dict:
        s = {**asdict(self.settings), **self.details}
        if self.groups:
            total = sum(g.channels for g in self.groups)
            kept = sum(len(self.keep[k]) for k in range(len(self.groups)))
            s.update({"threshold": self.threshold, "safe_percent": self.safe_percent, "groups": len(self.groups),
                      "group_channels": total, "group_channels_kept": kept, "removed_share": 1 - kept / total,
                      "clamped_layers": [self.groups[k].bns[0] for k in self.clamped]})
        return s


def importance(model: nn.Module, groups: list[ChannelGroup], settings: PruneSettings,
               data: SearchData | None = None) -> list[torch.Tensor]:
    """One score per group channel (higher = more important). eagleeye and sensitivity choose widths by other means
    and keep, within a group, the channels with the largest filter norms."""
    if settings.method.endswith("slim"):
        return group_scores(model, groups, settings.group_score)
    if settings.method in ("l1", "eagleeye", "sensitivity"):
        return l1_scores(model, groups)
    if settings.method == "taylor":
        data = data or SearchData()
        data.need("--method taylor", "batches", "loss")
        return taylor_scores(model, groups, data.batches, data.loss(model))
    raise ValueError(f"method '{settings.method}' has no channel importance")


def sensitivity_curves(model: nn.Module, groups: list[ChannelGroup], scores: list[torch.Tensor],
                       settings: PruneSettings, data: SearchData) -> tuple[float, list[Curve]]:
    """The per-layer analysis (or the one in data.curves, checked to describe these groups); `scores` rank the
    channels within each group (importance() of method sensitivity: filter norms). data.sensitivity_score picks the
    held-out loss (fast) or mAP50 (the slow reference)."""
    if data.curves is not None:
        base, curves = data.curves
        if [c.channels for c in curves] != [g.channels for g in groups]:
            raise ValueError("the sensitivity analysis given was made for another model (its layers and widths "
                             "differ from this one's groups); run prune.py --sensitivity on this model")
        return base, curves
    args = (settings.ratios, settings.min_channels, settings.round_to)
    if data.sensitivity_score == "map":
        data.need("--method sensitivity", "batches", "score")
        return sensitivity.analyze(model, groups, scores, data.images, data.score, *args)
    data.need("--method sensitivity", "batches", "held", "loss")
    calib = data.images[:data.sensitivity_calib or None]
    return sensitivity.analyze_loss(model, groups, scores, calib, data.held, data.loss(model), *args)


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


def prune_model(model: nn.Module, settings: PruneSettings, data: SearchData | None = None) -> PruneResult:
    """A pruned copy of `model` (a float DetectionModel with BatchNorms) and what was decided on the way.

    eagleeye, taylor, sensitivity and adaptive_bn also need `data` (training batches, a held-out scorer, the loss)."""
    settings.check()
    data = data or SearchData()
    if settings.adaptive_bn:
        data.need("--adaptive-bn", "batches")
    model = model.float().eval()
    result = _prune(model, settings, data)
    if settings.adaptive_bn and settings.method not in ("eagleeye", "sensitivity"):
        recalibrate_bn(result.model, data.images)  # eagleeye and sensitivity already did
    return result


def _prune(model: nn.Module, settings: PruneSettings, data: SearchData) -> PruneResult:
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
    scores = importance(base, groups, settings, data)
    dead = collapse(scores)
    details.update(dead.record())
    cost = ChannelCost(base, groups, settings.imgsz) if settings.flops_target else None
    target = 0.0
    if cost is not None:
        full = cost.total if base is model else model_flops(model, settings.imgsz)  # layer+slim: the original's
        target = settings.flops_target * full
        details["target_GFLOPs"] = target
    if settings.method == "sensitivity":
        return _live(_by_sensitivity(base, groups, scores, settings, data, cost, target, details), scores)
    if cost is not None:
        if settings.method == "eagleeye":
            data.need("--method eagleeye", "batches", "score")
            pruned, cands, best = eagleeye.search(base, groups, scores, cost, target, settings.candidates,
                                                  data.images, data.score, settings.seed, settings.min_channels,
                                                  settings.round_to)
            keep = eagleeye.keep_top(scores, cands[best].kept)
            details.update({"candidates": [c.record() for c in cands], "best": best,
                            "adaptive_bn_gain": eagleeye.mean_gain(cands)})
            return _live(PruneResult(_finish(pruned), settings, layer_table(base, pruned), groups=groups, keep=keep,
                                     base=base, details=details), scores)
        details["percent_used"] = percent = percent_for_flops(scores, cost, target, settings)
    elif settings.auto:
        details["percent_used"] = percent = auto_percent(dead, safe_percent(scores))
    else:
        percent = settings.percent
    threshold = global_threshold(scores, percent) if scores else 0.0
    keep, clamped = select_channels(scores, percent, settings.min_channels, settings.round_to)
    pruned = _finish(prune_channels(base, keep, groups))
    return _live(PruneResult(pruned, settings, layer_table(base, pruned), threshold, safe_percent(scores), groups,
                             keep, clamped, base, details), scores)


def _live(result: PruneResult, scores: list[torch.Tensor]) -> PruneResult:
    """Records the scores and how many of the removed channels had not collapsed (details live_removed)."""
    result.scores = scores
    result.details["live_removed"] = live_removed(scores, result.keep, result.details["collapse_threshold"])
    return result


def _by_sensitivity(base: nn.Module, groups: list[ChannelGroup], scores: list[torch.Tensor], settings: PruneSettings,
                    data: SearchData, cost: ChannelCost | None, target: float, details: dict) -> PruneResult:
    """Each layer pruned by the largest analysed ratio that alone costs at most --max-drop (or the drop that lands
    on the FLOPs target), in one pass; the result's BN statistics recomputed as in the analysis."""
    score0, curves = sensitivity_curves(base, groups, scores, settings, data)
    max_drop = settings.max_drop
    if cost is not None:
        max_drop = sensitivity.drop_for_flops(curves, score0, cost.gflops, target, settings.min_channels,
                                              settings.round_to)
    ratios = sensitivity.choose_ratios(curves, score0, max_drop)
    keep = sensitivity.keep_for_ratios(scores, ratios, settings.min_channels, settings.round_to)
    pruned = prune_channels(base, keep, groups)
    if data.batches:
        recalibrate_bn(pruned, data.images)
    details.update({"sensitivity_score": curves[0].metric if curves else None, "sensitivity_base": score0,
                    "max_drop_used": max_drop,
                    "layer_ratios": [{"layer": c.layer, "channels": c.channels, "ratio": r, "kept": len(keep[k])}
                                     for k, (c, r) in enumerate(zip(curves, ratios))]})
    return PruneResult(_finish(pruned), settings, layer_table(base, pruned), groups=groups, keep=keep, base=base,
                       details=details, curves=(score0, curves))
