"""EagleEye (Li et al., ECCV 2020; utils/pruning/eagleeye.py): random per-group widths at --flops-target, each sub-net
(filter L1 norms choose the channels) scored on held-out training images after adaptive BN; the best is kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.eagleeye import Draws, mean_gain, plot_candidates, search
from utils.pruning.graph import ChannelGroup
from utils.pruning.l1 import l1_scores
from utils.pruning.methods.base import PruneResult, PruneSettings, finish, layer_table, register
from utils.pruning.methods.channels import ChannelMethod, Cut
from utils.pruning.selection import keep_top


@register
@dataclass
class EagleEye(ChannelMethod):
    name: ClassVar[str] = "eagleeye"
    needs: ClassVar[tuple[str, ...]] = ("batches", "score")
    takes_percent: ClassVar[bool] = False
    recalibrates: ClassVar[bool] = True
    outputs: ClassVar[tuple[str, ...]] = ("candidates.png",)

    candidates: int = 20  # sub-nets drawn

    def check(self, s: PruneSettings) -> None:
        if not s.flops_target:
            raise ValueError("--method eagleeye needs --flops-target F (the share of GFLOPs to keep, e.g. 0.5)")
        if self.candidates < 1:
            raise ValueError("--candidates must be at least 1")
        super().check(s)

    def scores(self, model: nn.Module, groups: list[ChannelGroup], s: PruneSettings,
               data: SearchData) -> list[torch.Tensor]:
        return l1_scores(model, groups)  # which channels a drawn width keeps

    def select(self, cut: Cut, s: PruneSettings, data: SearchData) -> PruneResult:
        data.need("--method eagleeye", "batches", "score")
        draws = Draws(cut.target, self.candidates, s.seed, s.min_channels, s.round_to)
        pruned, cands, best = search(cut.model, cut.groups, cut.scores, cut.cost, data.images, data.score, draws)
        keep = keep_top(cut.scores, cands[best].kept)
        cut.details.update({"candidates": [c.record() for c in cands], "best": best,
                            "adaptive_bn_gain": mean_gain(cands)})
        return PruneResult(finish(pruned), self, s, layer_table(cut.model, pruned), groups=cut.groups, keep=keep,
                           base=cut.model, details=cut.details)

    def flags(self, s: PruneSettings) -> str:
        return f" --candidates {self.candidates} --calib-batches {s.calib_batches}"

    def criterion(self, s: dict) -> list[str]:
        c = s["candidates"][s["best"]]
        return [f"Method `eagleeye`: {len(s['candidates'])} random sub-nets at the target, {s['calib_batches']} "
                f"calibration batches for adaptive BN, scored by mAP50 on held-out training images. Chosen: "
                f"candidate {s['best']} (mAP50 {c['score_inherited']:.3f} with inherited BN statistics, "
                f"{c['score_adaptive']:.3f} after adaptive BN). Mean gain from adaptive BN over the candidates: "
                f"{s['adaptive_bn_gain']:+.3f}."]

    def choice(self, s: dict) -> list[str]:
        c = s["candidates"][s["best"]]
        return [f"best of {len(s['candidates'])} candidates: mAP50 {c['score_adaptive']:.3f} on held-out images "
                f"after adaptive BN ({c['score_inherited']:.3f} before); mean adaptive-BN gain "
                f"{s['adaptive_bn_gain']:+.3f}"]

    def tables(self, r: dict) -> list[str]:
        s = r["settings"]
        rows = [f"| {i}{' (chosen)' if i == s['best'] else ''} | {c['gflops']:.3f} | {c['score_inherited']:.4f} | "
                f"{c['score_adaptive']:.4f} |" for i, c in enumerate(s["candidates"])]
        return ["", "## Candidates", "", "| # | GFLOPs | mAP50 inherited BN | mAP50 adaptive BN |", "|---|---|---|---|",
                *rows, *super().tables(r)]

    def save_extras(self, result: PruneResult, save_dir: Path, title: str) -> None:
        plot_candidates(result.details["candidates"], result.details["best"], save_dir / "candidates.png")
