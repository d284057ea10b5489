"""Layer pruning (utils/pruning/layer.py): remove the --layers residual bottlenecks with the smallest mean |gamma|;
layer+slim then slims what is left, its FLOPs target counted on the original model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.layer import remove_blocks
from utils.pruning.methods.base import Method, PruneResult, PruneSettings, finish, layer_table, register
from utils.pruning.methods.slim import Slim


def _remove(model: nn.Module, layers: int, details: dict) -> nn.Module:
    base, gone = remove_blocks(model, layers)
    details["removed_blocks"] = [{"name": b.name, "score": b.score} for b in gone]
    return base


def _check_layers(name: str, layers: int) -> None:
    if layers < 1:
        raise ValueError(f"--method {name} needs --layers N >= 1 (residual bottlenecks to remove)")


def _blocks_line(s: dict) -> str:
    return f"Removed {len(s['removed_blocks'])} residual bottleneck(s) (mean |gamma|): " + ", ".join(
        f"{x['name']} ({x['score']:.3g})" for x in s["removed_blocks"]) + "."


def _blocks_part(s: dict) -> str:
    return f"removed {len(s['removed_blocks'])} bottleneck(s)"


@register
@dataclass
class Layer(Method):
    name: ClassVar[str] = "layer"
    takes_percent: ClassVar[bool] = False

    layers: int = 0  # residual bottlenecks to remove

    def check(self, s: PruneSettings) -> None:
        super().check(s)
        _check_layers(self.name, self.layers)
        if s.flops_target:
            raise ValueError("--method layer takes no --flops-target (its FLOPs follow from --layers)")

    def prune(self, model: nn.Module, s: PruneSettings, data: SearchData) -> PruneResult:
        details: dict = {}
        base = _remove(model, self.layers, details)
        return PruneResult(finish(base), self, s, layer_table(model, base), base=base, details=details)

    def flags(self, s: PruneSettings) -> str:
        return f" --layers {self.layers}"

    def report_lines(self, s: dict, before: dict, after: dict) -> list[str]:
        return [_blocks_line(s)]

    def decision(self, s: dict) -> str:
        return _blocks_part(s)


@register
@dataclass
class LayerSlim(Slim):
    name: ClassVar[str] = "layer+slim"

    layers: int = 0  # residual bottlenecks to remove before slimming

    def check(self, s: PruneSettings) -> None:
        super().check(s)
        _check_layers(self.name, self.layers)

    def prepare(self, model: nn.Module, s: PruneSettings, details: dict) -> nn.Module:
        return _remove(model, self.layers, details)

    def flags(self, s: PruneSettings) -> str:
        return f" --layers {self.layers}" + super().flags(s)

    def report_lines(self, s: dict, before: dict, after: dict) -> list[str]:
        return [_blocks_line(s), *super().report_lines(s, before, after)]

    def decision(self, s: dict) -> str:
        return ", ".join([_blocks_part(s), super().decision(s)])
