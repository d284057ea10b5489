"""Channel flow through a DetectionModel and the channel groups it implies: which BatchNorm channels must be removed
together, and who reads them. The first stage of pruning: graph -> groups (scores) -> importance -> selection ->
surgery -> yaml; nothing here imports a later stage.

Every channel of every tensor is an *element*: an output channel of a BatchNorm, or an unprunable channel (the image,
the output of a module without a rule). The layers are walked in order through their `.f` indices, with one rule per
module type mapping the elements of a module's input to those of its output: a conv's BN makes new elements, a Concat
concatenates its inputs' element lists, pooling and upsampling pass them through, and a residual add or a depth-wise
conv *ties* elements (union-find), because channel i of one side only exists together with channel i of the other.
Each conv records which element it reads at which input channel. A set of tied elements is one removable channel;
`make_groups` gathers those into aligned groups, returned by `analyze_groups` / `build_groups`.

A group is a run of channels with the same structure: group channel t is channel `offset + t` of every member BN
and input channel `offset + t` of every consumer conv. A member BN may appear twice in one group (a GhostBottleneck
adds one tensor onto both halves of a GhostConv's output, whose halves are tied by its depth-wise conv). Like
Torch-Pruning's DependencyGraph, the graph builds its groups; scoring them is the next stage's (groups.py).

Rules rather than torch.fx: they state the semantics of YOLOv5's few block types, anything without a rule is pinned
(its inputs and its own BNs become unprunable, with the reason), and one dry run checks every layer's channel count
against the rules, so a wrong rule fails loudly instead of mis-pruning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Union

import torch
import torch.nn as nn

from models.common import SPP, SPPF, Bottleneck, C3, C3Ghost, Concat, Conv, DWConv, Focus, GhostBottleneck, GhostConv
from models.yolo import Detect

__all__ = [
    "ChannelFlow", "ChannelGroup", "GroupAnalysis", "Member", "analyze_groups", "build_groups", "make_groups",
    "prunable_bns", "probe_size", "trace_channels",
]

Layout = list[int]  # the element id of each channel of a tensor
Inputs = Union[Layout, list[Layout]]  # one tensor, or several for Concat and Detect


@dataclass
class ChannelFlow:
    """Elements of a traced model, how they are tied, who reads them, and which ones may not be removed."""

    owner: list[tuple[str, int] | None] = field(default_factory=list)  # element -> (BN name, channel) or None
    parent: list[int] = field(default_factory=list)  # union-find forest over elements
    reads: list[list[tuple[str, int]]] = field(default_factory=list)  # element -> [(Conv2d name, input channel)]
    pinned: dict[int, str] = field(default_factory=dict)  # root -> why its channel may not be removed
    residual: set[int] = field(default_factory=set)  # roots tied by a residual add
    producer: dict[str, str | None] = field(default_factory=dict)  # BN name -> the Conv2d it normalises
    depthwise: set[str] = field(default_factory=set)  # BNs after a depth-wise conv: its inputs go with its outputs

    def new(self, n: int, bn: str | None = None) -> Layout:
        start = len(self.owner)
        self.owner.extend((bn, i) if bn else None for i in range(n))
        self.parent.extend(range(start, start + n))
        self.reads.extend([] for _ in range(n))
        return list(range(start, start + n))

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]  # path halving
            e = self.parent[e]
        return e

    def tie(self, a: int, b: int, residual: bool = False) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.pinned:
                self.pinned.setdefault(ra, self.pinned.pop(rb))
            if rb in self.residual:
                self.residual.discard(rb)
                self.residual.add(ra)
        if residual:
            self.residual.add(ra)

    def pin(self, elements: Layout, reason: str) -> None:
        for e in elements:
            self.pinned.setdefault(self.find(e), reason)

    def classes(self) -> dict[int, list[int]]:
        """Root -> its elements: each entry is one channel that is removed everywhere or nowhere."""
        out: dict[int, list[int]] = {}
        for e in range(len(self.parent)):
            out.setdefault(self.find(e), []).append(e)
        return out


@dataclass(frozen=True)
class Member:
    """One BN of a group; its conv's output channels go with it (and its input channels too when depth-wise)."""

    bn: str  # name in model.named_modules()
    conv: str  # the Conv2d whose output this BN normalises
    offset: int  # group channel t is channel offset + t of this BN (and of its conv's outputs)
    depthwise: bool = False  # conv has groups == channels: remove its input channel offset + t as well


@dataclass
class ChannelGroup:
    """Channels 0..channels-1 of a group: each one is removed from every member and every consumer, or kept."""

    members: list[Member]
    consumers: list[tuple[str, int]]  # (Conv2d name, input-channel offset): group channel t is input offset + t
    channels: int
    residual: bool = False  # tied by a residual add

    @property
    def bns(self) -> list[str]:
        return list(dict.fromkeys(m.bn for m in self.members))

    @property
    def convs(self) -> list[str]:
        return list(dict.fromkeys(m.conv for m in self.members))


@dataclass
class GroupAnalysis:
    groups: list[ChannelGroup]  # every prunable group, residual ones included
    unprunable: dict[str, str]  # BN name -> why (some of) its channels may not be removed


def _signature(flow: ChannelFlow, elements: list[int]) -> tuple[int, tuple]:
    """(base channel, structure relative to it): channels with equal structures and adjacent bases align."""
    members = sorted(flow.owner[e] for e in elements)
    base = members[0][1]
    reads = sorted(r for e in elements for r in flow.reads[e])
    key = (tuple((bn, i - base) for bn, i in members), tuple((c, p - base) for c, p in reads))
    return base, key


def _runs(bases: list[int]) -> list[tuple[int, int]]:
    """Sorted bases split into (start, length) runs of consecutive integers."""
    runs: list[tuple[int, int]] = []
    for b in sorted(bases):
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs


def make_groups(flow: ChannelFlow, order: dict[str, int]) -> list[ChannelGroup]:
    """Gather the flow's unpinned channel classes into aligned groups, sorted by `order` (module name -> rank)."""
    by_key: dict[tuple, list[int]] = {}
    for root, elements in flow.classes().items():
        if root in flow.pinned:
            continue
        base, key = _signature(flow, elements)
        by_key.setdefault((key, root in flow.residual), []).append(base)
    groups = []
    for ((members, reads), residual), bases in by_key.items():
        for start, n in _runs(bases):
            mem = sorted({Member(bn, flow.producer[bn], start + i, bn in flow.depthwise) for bn, i in members},
                         key=lambda m: (order[m.bn], m.offset))
            cons = sorted({(c, start + p) for c, p in reads}, key=lambda r: (order[r[0]], r[1]))
            groups.append(ChannelGroup(mem, cons, n, residual))
    return sorted(groups, key=lambda g: (order[g.members[0].bn], g.members[0].offset))


class _Tracer:
    """Applies the module rules; `out_channels` (from the dry run) sizes the outputs of modules without a rule."""

    def __init__(self, flow: ChannelFlow, out_channels: dict[str, int]):
        self.flow = flow
        self.out_channels = out_channels

    def run(self, m: nn.Module, name: str, x: Inputs) -> Layout | None:
        rule = RULES.get(type(m))  # exact types: a subclass may change forward(), so it gets the safe default
        return rule(self, m, name, x) if rule else self.unknown(m, name, x)

    def read(self, conv: str, x: Layout) -> None:
        for p, e in enumerate(x):
            self.flow.reads[e].append((conv, p))

    def add(self, x: Layout, y: Layout, name: str) -> Layout:
        if len(x) != len(y):
            raise RuntimeError(f"{name}: residual add of {len(x)} and {len(y)} channels")
        for a, b in zip(x, y):
            self.flow.tie(a, b, residual=True)
        return x

    def unknown(self, m: nn.Module, name: str, x: Inputs) -> Layout:
        reason = f"{name}: no channel rule for {type(m).__name__}"
        self.flow.pin(_flatten(x), reason)
        for sub, bn in m.named_modules(prefix=name):
            if isinstance(bn, nn.BatchNorm2d):
                self.flow.producer[sub] = None
                self.flow.pin(self.flow.new(bn.num_features, sub), reason)
        if name not in self.out_channels:
            raise RuntimeError(f"{reason}, and it gave no 4-D tensor in the dry run to size its output")
        out = self.flow.new(self.out_channels[name])
        self.flow.pin(out, reason)
        return out


def _flatten(x: Inputs) -> Layout:
    return [e for part in x for e in (part if isinstance(part, list) else [part])]


def _conv(t: _Tracer, m: Conv, name: str, x: Layout) -> Layout:
    conv, cname = m.conv, f"{name}.conv"
    if "bn" not in m._modules:  # fused: no BN gamma to judge channels by
        t.read(cname, x)
        out = t.flow.new(conv.out_channels)
        t.flow.pin(out, f"{cname}: fused conv without BatchNorm")
        return out
    bn = f"{name}.bn"
    t.flow.producer[bn] = cname
    out = t.flow.new(m.bn.num_features, bn)
    if conv.groups == conv.in_channels == conv.out_channels:  # depth-wise: output i is computed from input i only
        t.flow.depthwise.add(bn)
        for a, b in zip(x, out):
            t.flow.tie(a, b)
    elif conv.groups == 1:
        t.read(cname, x)
    else:  # removing one channel would shift the others across group boundaries
        t.read(cname, x)
        reason = f"{cname}: grouped conv (groups={conv.groups}) ties channels across groups"
        t.flow.pin(x, reason)
        t.flow.pin(out, reason)
    return out


def _focus(t: _Tracer, m: Focus, name: str, x: Layout) -> Layout:
    return t.run(m.conv, f"{name}.conv", x * 4)  # space-to-depth: four pixel phases of every channel, concatenated


def _bottleneck(t: _Tracer, m: Bottleneck, name: str, x: Layout) -> Layout:
    y = t.run(m.cv2, f"{name}.cv2", t.run(m.cv1, f"{name}.cv1", x))
    return t.add(x, y, name) if m.add else y


def _c3(t: _Tracer, m: C3, name: str, x: Layout) -> Layout:
    a = t.run(m.m, f"{name}.m", t.run(m.cv1, f"{name}.cv1", x))
    b = t.run(m.cv2, f"{name}.cv2", x)
    return t.run(m.cv3, f"{name}.cv3", a + b)


def _spp(t: _Tracer, m: SPP, name: str, x: Layout) -> Layout:
    y = t.run(m.cv1, f"{name}.cv1", x)
    pooled = [t.run(p, f"{name}.m.{k}", y) for k, p in enumerate(m.m)]
    return t.run(m.cv2, f"{name}.cv2", y + _flatten(pooled))


def _sppf(t: _Tracer, m: SPPF, name: str, x: Layout) -> Layout:
    ys = [t.run(m.cv1, f"{name}.cv1", x)]
    for _ in range(3):  # the same pool three times in series
        ys.append(t.run(m.m, f"{name}.m", ys[-1]))
    return t.run(m.cv2, f"{name}.cv2", _flatten(ys))


def _ghost_conv(t: _Tracer, m: GhostConv, name: str, x: Layout) -> Layout:
    y = t.run(m.cv1, f"{name}.cv1", x)
    return y + t.run(m.cv2, f"{name}.cv2", y)


def _ghost_bottleneck(t: _Tracer, m: GhostBottleneck, name: str, x: Layout) -> Layout:
    y = t.run(m.conv, f"{name}.conv", x)
    return t.add(y, t.run(m.shortcut, f"{name}.shortcut", x), name)


def _sequential(t: _Tracer, m: nn.Sequential, name: str, x: Layout) -> Layout:
    for k, sub in enumerate(m):
        x = t.run(sub, f"{name}.{k}", x)
    return x


def _passthrough(t: _Tracer, m: nn.Module, name: str, x: Layout) -> Layout:
    return x  # per-channel ops (identity, upsampling, max-pooling) keep the channel order


def _concat(t: _Tracer, m: Concat, name: str, x: list[Layout]) -> Layout:
    return _flatten(x) if m.d == 1 else t.unknown(m, name, x)


def _detect(t: _Tracer, m: Detect, name: str, x: list[Layout]) -> None:
    for j, layout in enumerate(x):  # level j's 1x1 conv reads the layer feeding level j; its outputs are fixed
        t.read(f"{name}.m.{j}", layout)


RULES: dict[type, Callable] = {
    Conv: _conv, DWConv: _conv, Focus: _focus, Bottleneck: _bottleneck, C3: _c3, C3Ghost: _c3, SPP: _spp,
    SPPF: _sppf, GhostConv: _ghost_conv, GhostBottleneck: _ghost_bottleneck, nn.Sequential: _sequential,
    nn.Identity: _passthrough, nn.Upsample: _passthrough, nn.MaxPool2d: _passthrough, Concat: _concat,
    Detect: _detect,
}


def _record(counts: dict[str, int], name: str, module: nn.Module, inputs, output) -> None:
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        counts[name] = output.shape[1]


def probe_size(model: nn.Module) -> int:
    """Side of the small square image the channel analyses run through a model: two strides of its deepest level."""
    stride = getattr(model, "stride", None)
    return 2 * (int(stride.max()) if stride is not None else 32)


def _dry_run_channels(model: nn.Module, ch: int) -> dict[str, int]:
    """Output channels of every named module, from one forward pass of a small zero image in eval mode."""
    counts: dict[str, int] = {}
    handles = [mod.register_forward_hook(partial(_record, counts, name)) for name, mod in model.named_modules() if name]
    modes = [(mod, mod.training) for mod in model.modules()]
    p = next(model.parameters())
    s = probe_size(model)
    try:
        model.eval()  # train-mode BN would update running statistics
        with torch.no_grad():
            model(torch.zeros(1, ch, s, s, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        for mod, training in modes:
            mod.training = training
    return counts


def trace_channels(model: nn.Module) -> ChannelFlow:
    """Trace the channel flow of a DetectionModel (layers in `model.model`, each with `.f`)."""
    ch = getattr(model, "yaml", {}).get("ch", 3)
    counts = _dry_run_channels(model, ch)
    flow = ChannelFlow()
    tracer = _Tracer(flow, counts)
    x: Layout | None = flow.new(ch)
    flow.pin(x, "image input")
    outputs: list[Layout | None] = []
    for k, m in enumerate(model.model):
        name = f"model.{k}"
        if m.f != -1:
            x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
        x = tracer.run(m, name, x)
        if x is not None and len(x) != counts.get(name, len(x)):
            raise RuntimeError(f"{name} ({type(m).__name__}): traced {len(x)} channels, ran with {counts[name]}")
        outputs.append(x)
    return flow


def analyze_groups(model: nn.Module) -> GroupAnalysis:
    """All prunable channel groups of a DetectionModel, and every BN that may not be pruned with the reason.

    A BN only some of whose channels are tied to something unprunable (not the case in YOLOv5's yamls) is listed in
    both: its other channels stay prunable.
    """
    flow = trace_channels(model)
    order = {name: k for k, (name, _) in enumerate(model.named_modules())}
    unprunable = {}
    for e, owner in enumerate(flow.owner):
        root = flow.find(e)
        if owner and root in flow.pinned:
            unprunable.setdefault(owner[0], flow.pinned[root])
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and name not in flow.producer:
            unprunable[name] = f"{name}: not on the traced forward path"
    return GroupAnalysis(make_groups(flow, order), unprunable)


def build_groups(model: nn.Module, skip_shortcut: bool = False) -> list[ChannelGroup]:
    """Prunable channel groups; skip_shortcut leaves residual groups alone (earlier YOLOv5 slimming repos' choice)."""
    return [g for g in analyze_groups(model).groups if not (skip_shortcut and g.residual)]


def prunable_bns(model: nn.Module, skip_shortcut: bool = False) -> dict[str, nn.BatchNorm2d]:
    """The BNs in prunable groups, in model order: the ones an L1 penalty on gamma should act on."""
    names = {bn for g in build_groups(model, skip_shortcut) for bn in g.bns}
    return {n: m for n, m in model.named_modules() if n in names}
