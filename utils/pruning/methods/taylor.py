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
from utils.pruning.taylor import taylor_scores


@register
@dataclass
class Taylor(Ranked):
    name: ClassVar[str] = "taylor"
    needs: ClassVar[tuple[str, ...]] = ("batches", "loss")

    def scores(self, model: nn.Module, groups: list[ChannelGroup], s: PruneSettings,
               data: SearchData) -> list[torch.Tensor]:
        data.need("--method taylor", "batches", "loss")
        return taylor_scores(model, groups, data.batches, data.loss(model))

    def flags(self, s: PruneSettings) -> str:
        return f" --calib-batches {s.calib_batches}" + super().flags(s)

    def criterion(self, s: dict) -> list[str]:
        return [*super().criterion(s),
                f"Channel score: first-order Taylor |sum of gamma*dL/dgamma + beta*dL/dbeta over a group's BNs|, "
                f"averaged over {s['calib_batches']} training batches."]
