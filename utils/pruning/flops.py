"""What a channel selection would cost, without building it: GFLOPs as a function of the kept width of every group.

Searches over widths (a FLOPs target for slim and l1, EagleEye's random candidates) evaluate thousands of selections;
surgery and a profiler pass for each would take minutes. `ChannelCost` counts like `utils.torch_utils.model_flops`
(thop 0.1: a conv costs out_elements x in / groups x k x k, a BN 4 x elements), as a closed form in the kept widths:
every conv's output and input widths are its full widths minus what its groups remove. What thop counts beyond convs
and BNs (upsampling) is measured once on the full model and kept as a constant; 0.03% in yolov5n, and
the estimate is within 0.1% of model_flops of the pruned model (tests/test_prune_methods.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
import torch.nn as nn

from utils.pruning.graph import ChannelGroup
from utils.torch_utils import model_flops


def _area(store: dict, name: str, module: nn.Module, inputs, output) -> None:
    store[name] = output.shape[2] * output.shape[3]


class ChannelCost:
    """GFLOPs at `imgsz` of `model` with group k cut to `kept[k]` channels (any channels: the count is all it needs)."""

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], imgsz: int = 640):
        self.full = np.array([g.channels for g in groups], dtype=np.int64)
        convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        areas: dict[str, int] = {}
        handles = [m.register_forward_hook(partial(_area, areas, n)) for n, m in {**convs, **bns}.items()]
        stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32  # model_flops' probe
        p = next(model.parameters())
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, model.yaml.get("ch", 3), stride, stride, device=p.device, dtype=p.dtype))
        finally:
            for h in handles:
                h.remove()
        scale = (imgsz / stride) ** 2
        names = list(convs)
        index = {n: i for i, n in enumerate(names)}
        self.area = np.array([areas.get(n, 0) * scale for n in names])
        self.out0 = np.array([convs[n].out_channels for n in names], dtype=np.int64)
        self.in0 = np.array([convs[n].in_channels for n in names], dtype=np.int64)
        self.k2 = np.array([convs[n].kernel_size[0] * convs[n].kernel_size[1] for n in names])
        self.depthwise = np.array([c.groups > 1 and c.groups == c.in_channels == c.out_channels
                                   for c in convs.values()])
        self.groups1 = np.array([c.groups for c in convs.values()])
        # out_cut[i, k]: output channels conv i loses per channel group k removes (a group may hold a conv twice)
        self.out_cut = np.zeros((len(names), len(groups)), dtype=np.int64)
        self.in_cut = np.zeros_like(self.out_cut)
        for k, g in enumerate(groups):
            for m in g.members:
                self.out_cut[index[m.conv], k] += 1
            for c, _ in g.consumers:
                self.in_cut[index[c], k] += 1
        bn_conv = {n.removesuffix(".bn") + ".conv": n for n in bns}  # Conv blocks name them <block>.conv / .bn
        self.bn_area = np.array([areas.get(bn_conv.get(n, ""), 0) * scale for n in names])
        self.total = model_flops(model, imgsz)  # the full model's GFLOPs, as profiled
        self.rest = self.total - self._conv_bn_gflops(self.full)

    def gflops(self, kept: Sequence[int] | np.ndarray) -> float:
        """GFLOPs with group k at kept[k] channels."""
        return self._conv_bn_gflops(kept) + self.rest

    def _conv_bn_gflops(self, kept: Sequence[int] | np.ndarray) -> float:
        cut = self.full - np.asarray(kept, dtype=np.int64)
        out = self.out0 - self.out_cut @ cut
        inp = np.where(self.depthwise, 1, (self.in0 - self.in_cut @ cut) // self.groups1)
        macs = self.area * out * inp * self.k2 + 4 * self.bn_area * out
        return float(macs.sum()) * 2 / 1e9
