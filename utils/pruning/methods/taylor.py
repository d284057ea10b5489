"""First-order Taylor importance (Molchanov et al., CVPR 2019; utils/pruning/taylor.py): the loss change of removing a
channel, from gradients on --calib-batches training batches, cut by one global ranking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.graph import ChannelGroup
from utils.pruning.methods.base import PruneSettings, register
from utils.pruning.methods.channels import Ranked
from utils.pruning.taylor import taylor_scores, weight_taylor_scores

SCORES = ("bn", "weights")  # --taylor-score


@register
@dataclass
class Taylor(Ranked):
    name: ClassVar[str] = "taylor"
    needs: ClassVar[tuple[str, ...]] = ("batches", "loss")

    taylor_score: str = "bn"  # bn: the BN terms (taylor_scores); weights: every owned parameter (weight_taylor_scores)

    def check(self, s: PruneSettings) -> None:
        if self.taylor_score not in SCORES:
            raise ValueError(f"--taylor-score must be one of {', '.join(SCORES)}, not {self.taylor_score}")
        super().check(s)

    def scores(self, model: nn.Module, groups: list[ChannelGroup], s: PruneSettings,
               data: SearchData) -> list[torch.Tensor]:
        data.need("--method taylor", "batches", "loss")
        score = weight_taylor_scores if self.taylor_score == "weights" else taylor_scores
        return score(model, groups, data.batches, data.loss(model))

    def flags(self, s: PruneSettings) -> str:
        extra = " --taylor-score weights" if self.taylor_score == "weights" else ""
        return f" --calib-batches {s.calib_batches}{extra}" + super().flags(s)

    def criterion(self, s: dict) -> list[str]:
        if s.get("taylor_score") == "weights":
            return [*super().criterion(s), f"Channel score: first-order Taylor, sum |p * dL/dp| over every parameter "
                    f"the channel owns (conv kernels, BN gamma and beta, consumers' input kernels), gradients summed "
                    f"over {s['calib_batches']} training batches, mean over the group's layers, normalised by the "
                    "group's mean."]
        return [*super().criterion(s),
                f"Channel score: first-order Taylor |sum of gamma*dL/dgamma + beta*dL/dbeta over a group's BNs|, "
                f"averaged over {s['calib_batches']} training batches."]
