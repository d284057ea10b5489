"""Torch-Pruning's pruners as methods, the baselines a Torch-Pruning user would run (benchmarks/tp_prune.py's too).

tp-magnitude is tp.pruner.MagnitudePruner with MagnitudeImportance(p=2); tp-taylor is tp.pruner.MetaPruner with
GroupTaylorImportance() on the gradients of the YOLOv5 training loss summed over the calibration batches. Both cut
every channel group by one local ratio (TP's default), with the Detect layer ignored (its convs' outputs are the
predictions). The ratio is bisected to the smallest one whose model keeps at most --flops-target of the GFLOPs at
--imgsz, on a fresh copy per try. Unlike this repo's methods, Torch-Pruning does not fold the constant outputs of
removed channels into their consumers. torch-pruning is imported only when one of these runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from utils.log import LOGGER, colorstr
from utils.pruning.data import Batch, SearchData
from utils.pruning.methods.base import Method, PruneResult, PruneSettings, finish, layer_table, register
from utils.torch_utils import model_flops

MAX_RATIO = 0.95  # TP's ratio is the share of each group's channels removed; 1.0 would empty layers
TRIES = 14  # bisection steps: the ratio to within 6e-5, below one channel of the widest layer of a yolov5n


def tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")  # the package's own __version__ says 1.6.0 in the 1.6.1 wheel


def loss_gradients(model: nn.Module, batches: Sequence[Batch], loss: Callable) -> dict[str, torch.Tensor]:
    """d(YOLOv5 loss)/d(parameter) summed over `batches`, in eval mode (BN statistics untouched, as taylor does);
    `loss` is SearchData.loss (data.yolo_loss)."""
    m = deepcopy(model).float().eval().requires_grad_(True)
    fn = loss(m)
    for imgs, targets in batches:
        fn(m(imgs), targets).backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def pruned_at(model: nn.Module, ratio: float, importance: str, grads: dict[str, torch.Tensor] | None) -> nn.Module:
    """A copy of `model` with every prunable group cut by `ratio` by Torch-Pruning (Detect ignored)."""
    import torch_pruning as tp

    m = deepcopy(model).float().eval().requires_grad_(True)
    s = max(int(m.stride.max()), 32) * 2  # tracing needs one cell at the coarsest level, not the real size
    example = torch.rand(1, m.yaml.get("ch", 3), s, s)
    if importance == "magnitude":
        pruner = tp.pruner.MagnitudePruner(m, example, tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                           ignored_layers=[m.model[-1]])
    else:
        for n, p in m.named_parameters():  # the copy has no gradients: give it the original's
            p.grad = grads[n].clone() if n in grads else None
        pruner = tp.pruner.MetaPruner(m, example, tp.importance.GroupTaylorImportance(), pruning_ratio=ratio,
                                      ignored_layers=[m.model[-1]])
    pruner.step()
    m.zero_grad(set_to_none=True)
    return m.requires_grad_(False)


def smallest_ratio(model: nn.Module, importance: str, share: float, imgsz: int,
                   grads: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict]:
    """The model pruned by the smallest ratio whose GFLOPs at imgsz are at most `share` of the model's, and how."""
    full = model_flops(model, imgsz)
    tries: list[dict] = []

    def attempt(ratio: float) -> tuple[nn.Module, float]:
        m = pruned_at(model, ratio, importance, grads)
        tries.append({"ratio": round(ratio, 6), "share": round(model_flops(m, imgsz) / full, 6)})
        return m, tries[-1]["share"]

    best, kept = attempt(MAX_RATIO)
    if kept > share:
        raise ValueError(f"--flops-target {share:g}: Torch-Pruning at its largest ratio {MAX_RATIO} still keeps "
                         f"{kept:.3f} of the GFLOPs")
    lo, hi = 0.0, MAX_RATIO
    for _ in range(TRIES):
        mid = (lo + hi) / 2
        m, s = attempt(mid)
        if s > share:
            lo = mid
        else:
            hi, best, kept = mid, m, s
    LOGGER.info(f"{colorstr('torch-pruning: ')}ratio {hi:.4f} keeps {kept:.4f} of {full:.3f} GFLOPs (target "
                f"{share:g}, {len(tries)} tries)")
    return best, {"pruning_ratio": round(hi, 6), "share": kept, "target_share": share, "base_GFLOPs": full,
                  "tries": tries}


@dataclass
class TorchPruning(Method):
    """A Torch-Pruning pruner with `importance`, cut to --flops-target."""

    importance: ClassVar[str] = ""
    takes_percent: ClassVar[bool] = False
    pruner: ClassVar[str] = ""  # how report.md names it

    def check(self, s: PruneSettings) -> None:
        if not s.flops_target:
            raise ValueError(f"--method {self.name} needs --flops-target F (the share of GFLOPs to keep, e.g. 0.5)")
        super().check(s)

    def gradients(self, model: nn.Module, data: SearchData) -> dict[str, torch.Tensor] | None:
        return None

    def prune(self, model: nn.Module, s: PruneSettings, data: SearchData) -> PruneResult:
        pruned, details = smallest_ratio(model, self.importance, s.flops_target, s.imgsz, self.gradients(model, data))
        return PruneResult(finish(pruned), self, s, layer_table(model, pruned), details=details)

    def report_lines(self, s: dict, before: dict, after: dict) -> list[str]:
        lines = [f"Method `{s['method']}`: Torch-Pruning {tp_version()} {self.pruner}; every channel group cut by one "
                 f"ratio, {s['pruning_ratio']:.4f}, the smallest of {len(s['tries'])} tries that keeps at most "
                 f"{s['target_share']:g} of the GFLOPs ({s['share']:.4f}); Detect ignored. The constant outputs of "
                 "removed channels are not folded into their consumers."]
        if s.get("adaptive_bn"):
            lines.append(f"BN statistics recomputed on {s['calib_batches']} training batches (--adaptive-bn).")
        return [*lines, f"BN channels {before['bn_channels']} -> {after['bn_channels']}."]

    def decision(self, s: dict) -> str:
        return f"Torch-Pruning ratio {s['pruning_ratio']:.4f} keeps {s['share']:.4f} of the GFLOPs"


@register
@dataclass
class TPMagnitude(TorchPruning):
    name: ClassVar[str] = "tp-magnitude"
    importance: ClassVar[str] = "magnitude"
    pruner: ClassVar[str] = "MagnitudePruner with MagnitudeImportance(p=2)"


@register
@dataclass
class TPTaylor(TorchPruning):
    name: ClassVar[str] = "tp-taylor"
    needs: ClassVar[tuple[str, ...]] = ("batches", "loss")
    importance: ClassVar[str] = "taylor"
    pruner: ClassVar[str] = "MetaPruner with GroupTaylorImportance on the YOLOv5 loss's gradients"

    def gradients(self, model: nn.Module, data: SearchData) -> dict[str, torch.Tensor]:
        data.need(f"--method {self.name}", "batches", "loss")
        return loss_gradients(model, data.batches, data.loss)

    def flags(self, s: PruneSettings) -> str:
        return f" --calib-batches {s.calib_batches}"
