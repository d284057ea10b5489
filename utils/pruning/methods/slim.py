"""Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017): a
channel is worth the |gamma| of its BatchNorm, which sparse training (train_sparse.py) drives to zero where the channel
is not needed; one global threshold cuts the lowest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.graph import ChannelGroup
from utils.pruning.groups import group_scores
from utils.pruning.methods.base import PruneSettings, register
from utils.pruning.methods.channels import Ranked


@register
@dataclass
class Slim(Ranked):
    name: ClassVar[str] = "slim"
    remedy: ClassVar[str] = ("sparse-train longer or harder (train_sparse.py --epochs, --shrink or --sr, --polarize "
                             "1.2), cut less (--percent auto), or use a method that does not rely on sparsity "
                             "(--method eagleeye or taylor)")

    group_score: str = "max"  # a channel's |gamma| over the members of its group: max or mean

    def check(self, s: PruneSettings) -> None:
        if self.group_score not in ("max", "mean"):
            raise ValueError(f"--group-score must be max or mean, not {self.group_score}")
        super().check(s)

    def scores(self, model: nn.Module, groups: list[ChannelGroup], s: PruneSettings,
               data: SearchData) -> list[torch.Tensor]:
        return group_scores(model, groups, self.group_score)
