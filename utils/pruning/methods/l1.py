"""L1-norm filter importance (Li et al., ICLR 2017; utils/pruning/l1.py): the sparsity-free baseline, each group's
filter norms over their mean, cut by one global ranking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.graph import ChannelGroup
from utils.pruning.l1 import l1_scores
from utils.pruning.methods.base import PruneSettings, register
from utils.pruning.methods.channels import Ranked


@register
@dataclass
class L1(Ranked):
    name: ClassVar[str] = "l1"

    def scores(self, model: nn.Module, groups: list[ChannelGroup], s: PruneSettings,
               data: SearchData) -> list[torch.Tensor]:
        return l1_scores(model, groups)
