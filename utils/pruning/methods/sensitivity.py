"""Sensitivity pruning (utils/pruning/sensitivity.py's analysis): each layer cut by the largest analysed ratio that,
that layer alone, costs at most --max-drop (or the drop that lands on --flops-target), in one pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from utils.pruning import sensitivity
from utils.pruning.data import SearchData
from utils.pruning.graph import ChannelGroup
from utils.pruning.l1 import l1_scores
from utils.pruning.methods.base import PruneResult, PruneSettings, finish, layer_table, register
from utils.pruning.methods.channels import ChannelMethod, Cut
from utils.pruning.selection import keep_for_ratios
from utils.pruning.sensitivity import Cuts, Curve
from utils.pruning.surgery import prune_channels
from utils.torch_utils import recalibrate_bn


@register
@dataclass
class Sensitivity(ChannelMethod):
    name: ClassVar[str] = "sensitivity"
    needs: ClassVar[tuple[str, ...]] = ("batches", "held", "loss")  # "score" instead of "held" for an mAP50 analysis
    recalibrates: ClassVar[bool] = True
    outputs: ClassVar[tuple[str, ...]] = ("sensitivity.csv", "sensitivity.png")

    max_drop: float = 0.0  # what each layer alone may cost (Curve.drops: loss increase or mAP50 lost)
    ratios: tuple[float, ...] = sensitivity.RATIOS  # the shares of a layer tried

    def __post_init__(self):
        self.ratios = tuple(self.ratios)

    def check(self, s: PruneSettings) -> None:
        if not (self.max_drop > 0) ^ bool(s.flops_target):
            raise ValueError("--method sensitivity needs one of --max-drop X (what each layer alone may cost: the "
                             "relative held-out loss increase, e.g. 0.05, or with --sensitivity-score map the mAP50 "
                             "lost, e.g. 0.02) or --flops-target F")
        self.check_ratios()
        super().check(s)

    def check_ratios(self) -> None:
        r = self.ratios
        if not r or not all(0 < x < 1 for x in r) or list(r) != sorted(set(r)):
            raise ValueError(f"--ratios must be increasing shares in (0, 1); got {' '.join(map(str, r))}")

    def scores(self, model: nn.Module, groups: list[ChannelGroup], s: PruneSettings,
               data: SearchData) -> list[torch.Tensor]:
        return l1_scores(model, groups)  # which channels a layer's ratio keeps

    def curves(self, model: nn.Module, groups: list[ChannelGroup], scores: list[torch.Tensor], s: PruneSettings,
               data: SearchData) -> tuple[float, list[Curve]]:
        """The per-layer analysis (or the one in data.curves, checked to describe these groups); `scores` rank the
        channels within each group. data.sensitivity_score picks the held-out loss (fast) or mAP50 (the slow
        reference)."""
        if data.curves is not None:
            base, curves = data.curves
            if [c.channels for c in curves] != [g.channels for g in groups]:
                raise ValueError("the sensitivity analysis given was made for another model (its layers and widths "
                                 "differ from this one's groups); run prune.py --sensitivity on this model")
            return base, curves
        cuts = Cuts(self.ratios, s.min_channels, s.round_to)
        if data.sensitivity_score == "map":
            data.need("--method sensitivity", "batches", "score")
            return sensitivity.analyze(model, groups, scores, data.images, data.score, cuts)
        data.need("--method sensitivity", "batches", "held", "loss")
        calib = data.images[:data.sensitivity_calib or None]
        return sensitivity.analyze_loss(model, groups, scores, calib, data.held, data.loss(model), cuts)

    def select(self, cut: Cut, s: PruneSettings, data: SearchData) -> PruneResult:
        """Every layer at once by its own ratio; the result's BN statistics recomputed as in the analysis."""
        score0, curves = self.curves(cut.model, cut.groups, cut.scores, s, data)
        max_drop = self.max_drop
        if cut.cost is not None:
            max_drop = sensitivity.drop_for_flops(curves, score0, cut.cost.gflops, cut.target, s.min_channels,
                                                  s.round_to)
        ratios = sensitivity.choose_ratios(curves, score0, max_drop)
        keep = keep_for_ratios(cut.scores, ratios, s.min_channels, s.round_to)
        pruned = prune_channels(cut.model, keep, cut.groups)
        if data.batches:
            recalibrate_bn(pruned, data.images)
        cut.details.update({"sensitivity_score": curves[0].metric if curves else None, "sensitivity_base": score0,
                            "max_drop_used": max_drop,
                            "layer_ratios": [{"layer": c.layer, "channels": c.channels, "ratio": r,
                                              "kept": len(keep[k])} for k, (c, r) in enumerate(zip(curves, ratios))]})
        return PruneResult(finish(pruned), self, s, layer_table(cut.model, pruned), groups=cut.groups, keep=keep,
                           base=cut.model, details=cut.details, curves=(score0, curves))

    def flags(self, s: PruneSettings) -> str:
        return f" --calib-batches {s.calib_batches}" + (f" --max-drop {self.max_drop:g}" if self.max_drop else "")

    def criterion(self, s: dict) -> list[str]:
        ratios = ", ".join(map(str, s["ratios"]))
        return [f"Method `sensitivity`: each layer cut by the largest of the ratios {ratios} whose mAP50 drop (that "
                f"layer alone, adaptive BN, held-out training images; unpruned {s['sensitivity_base']:.3f}) is at "
                f"most {s['max_drop_used']:.4f}, all in one pass, then adaptive BN on {s['calib_batches']} batches. "
                "Per-layer ratios below; curves in sensitivity.csv/png."]

    def choice(self, s: dict) -> list[str]:
        cut = sum(x["ratio"] > 0 for x in s["layer_ratios"])
        return [f"{cut} of {len(s['layer_ratios'])} layers cut, each costing at most {s['max_drop_used']:.4f} "
                f"mAP50 alone (unpruned {s['sensitivity_base']:.3f})"]

    def tables(self, r: dict) -> list[str]:
        rows = [f"| {x['layer']} | {x['ratio']:g} | {x['kept']} | {x['channels']} |"
                for x in r["settings"]["layer_ratios"]]
        return ["", "## Ratio per layer", "", "| layer | ratio | kept | total |", "|---|---|---|---|", *rows,
                *super().tables(r)]

    def save_extras(self, result: PruneResult, save_dir: Path, title: str) -> None:
        sensitivity.plot(save_dir / "sensitivity.png", *result.curves, f"{title}: per-layer sensitivity")
        sensitivity.save_csv(save_dir / "sensitivity.csv", *result.curves)
