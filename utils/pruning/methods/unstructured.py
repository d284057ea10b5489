"""Unstructured pruning (utils/pruning/unstructured.py): the --percent smallest conv weights of the whole model set
to zero; the shapes, and so the FLOPs, stay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.methods.base import Method, PruneResult, PruneSettings, finish, register
from utils.pruning.unstructured import prune_weights, zero_table

DENSE_NOTE = ("Unstructured zeros do not make dense kernels faster or the model smaller in memory: the shapes are "
              "unchanged and zeros are multiplied like any other number. Speed needs a sparse runtime; size needs "
              "compression (the zeros compress well).")


@register
@dataclass
class Unstructured(Method):
    name: ClassVar[str] = "unstructured"
    structured: ClassVar[bool] = False

    def check(self, s: PruneSettings) -> None:
        super().check(s)
        if s.flops_target:
            raise ValueError("--method unstructured takes no --flops-target (zeros cost FLOPs)")

    def prune(self, model: nn.Module, s: PruneSettings, data: SearchData) -> PruneResult:
        pruned = finish(prune_weights(model, s.percent))
        table = zero_table(pruned)
        zeros, weights = sum(r["zeros"] for r in table), sum(r["weights"] for r in table)
        return PruneResult(pruned, self, s, table, details={"zero_share": zeros / weights, "zeros": zeros,
                                                            "conv_weights": weights})

    def report_lines(self, s: dict, before: dict, after: dict) -> list[str]:
        return [f"Method `unstructured`: the {s['percent']:.1%} smallest conv weights (global L1 magnitude) set to "
                f"zero; {s['zeros']:,} of {s['conv_weights']:,} conv weights are zero ({s['zero_share']:.2%}).",
                "", DENSE_NOTE]

    def decision(self, s: dict) -> str:
        return f"{s['zero_share']:.2%} of conv weights are zero; dense kernels do not run faster (see report.md)"

    def tables(self, r: dict) -> list[str]:
        return ["", "## Zero weights per conv", "", "| conv | zeros | weights | zero share |", "|---|---|---|---|",
                *(f"| {x['name']} | {x['zeros']} | {x['weights']} | {x['zeros'] / x['weights']:.2f} |"
                  for x in r["layers"])]

    def plot_rows(self, result: PruneResult) -> tuple[list[dict], str]:
        return [{"name": x["name"], "channels": x["weights"], "kept": x["weights"] - x["zeros"]}
                for x in result.layers], "weights"
