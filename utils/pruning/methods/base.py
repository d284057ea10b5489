"""A prune method is an object: its name, what it needs, how it checks its options, how it cuts, how it describes
itself.

`Method` declares what prune.py and report.py ask of every method; its subclasses are dataclasses whose fields are
the method's own options (named as prune.py's flags, so `from_flags` can pick them). `PruneSettings` holds what every
method uses. `register` adds a class to `METHODS`, the registry --method looks names up in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch
import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.graph import ChannelGroup
from utils.pruning.sensitivity import Curve
from utils.pruning.yaml_writer import model_yaml

METHODS: dict[str, type[Method]] = {}  # --method name -> class, in the order --help lists them


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` a --method under `cls.name`."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"a method needs a name of its own; '{cls.name}' is empty or taken")
    METHODS[cls.name] = cls
    return cls


def create(name: str, **flags) -> Method:
    """The method registered as `name`, its options taken from `flags` by name (other flags ignored)."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[name].from_flags(flags)


@dataclass
class PruneSettings:
    """What prune.py's shared flags decide; a method's own options (--layers, --candidates, ...) are its fields."""

    percent: float = 0.5  # share of the prunable channels (counted per group channel) to remove; unstructured: weights
    skip_shortcut: bool = False  # leave residual groups alone
    min_channels: int = 1  # never keep fewer channels than this in a group
    round_to: int = 1  # round each group's kept width up to a multiple of this
    flops_target: float = 0.0  # > 0: keep this share of the original GFLOPs (replaces percent)
    calib_batches: int = 8  # training batches: adaptive BN, taylor's gradients
    seed: int = 0  # random draws (eagleeye) and the held-out split
    imgsz: int = 640  # the size GFLOPs are counted at
    adaptive_bn: bool = False  # recompute the pruned model's BN statistics on the calibration batches
    auto: bool = False  # --percent auto: cut the collapsed share (capped by the layer-emptying limit)

    def check(self, method: Method) -> None:
        """ValueError with a one-line reason for settings that `method` cannot honour."""
        if not 0 <= self.percent < 1:
            raise ValueError(f"--percent must be in [0, 1), the share of prunable channels to remove; "
                             f"got {self.percent}")
        if not 0 <= self.flops_target < 1:
            raise ValueError(f"--flops-target must be in (0, 1), the share of GFLOPs to keep; got {self.flops_target}")
        if self.min_channels < 1 or self.round_to < 1:
            raise ValueError("--min-channels and --round must be at least 1")
        if self.calib_batches < 1:
            raise ValueError("--calib-batches must be at least 1")
        method.check(self)


@dataclass
class PruneResult:
    model: nn.Module  # the pruned copy; its .yaml is the explicit-width yaml that rebuilds it
    method: Method
    settings: PruneSettings
    layers: list[dict]  # per BN: name, channels, kept (unstructured: per conv: name, weights, zeros)
    threshold: float = float("nan")  # channels scoring below it were removed (before min-channels and rounding)
    safe_percent: float = float("nan")  # the largest percent that empties no group by the threshold alone
    groups: list[ChannelGroup] = field(default_factory=list)  # of `base`
    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    clamped: list[int] = field(default_factory=list)  # groups kept at min_channels though every channel was below
    base: nn.Module | None = None  # the model the groups and keep refer to (after layer removal, if any)
    details: dict = field(default_factory=dict)  # what the method reports besides (candidates, removed blocks, ...)
    curves: tuple[float, list[Curve]] | None = None  # sensitivity: (unpruned score, per-layer curves) it used
    scores: list[torch.Tensor] = field(default_factory=list)  # per group, the channel scores the method ranked

    def summary(self) -> dict:
        """The method, the settings, its options and details: the "settings" of report.json, a checkpoint's "prune"."""
        s = {"method": self.method.name, **asdict(self.settings), **self.method.options(), **self.details}
        if self.groups:
            total = sum(g.channels for g in self.groups)
            kept = sum(len(self.keep[k]) for k in range(len(self.groups)))
            s.update({"threshold": self.threshold, "safe_percent": self.safe_percent, "groups": len(self.groups),
                      "group_channels": total, "group_channels_kept": kept, "removed_share": 1 - kept / total,
                      "clamped_layers": [self.groups[k].bns[0] for k in self.clamped]})
        return s


@dataclass
class Method:
    """What prune.py and report.py ask of a method. Subclasses set the class attributes, add their options as
    dataclass fields, and implement `prune` (or, cutting channel groups, `ChannelMethod.scores`/`select`)."""

    name: ClassVar[str] = ""  # the --method name
    needs: ClassVar[tuple[str, ...]] = ()  # SearchData fields it reads: prune.py then requires --data
    ranked: ClassVar[bool] = False  # cuts one global ranking at --percent, so --percent auto can choose the percent
    structured: ClassVar[bool] = True  # removes channels (needs BatchNorms); False: zeroes weights, shapes unchanged
    takes_percent: ClassVar[bool] = True  # --percent decides how much goes (else its options or --flops-target do)
    recalibrates: ClassVar[bool] = False  # its result already has BN statistics from the calibration batches
    remedy: ClassVar[str] = "cut less, or fine-tune to recover (finetune.py)"  # when a cut reaches live channels
    outputs: ClassVar[tuple[str, ...]] = ()  # files it writes beside pruned.pt, pruned.yaml, report.*, channels.png

    @classmethod
    def from_flags(cls, flags: Mapping[str, object]) -> Method:
        """An instance with the options found in `flags` (prune.py's, by name) and defaults for the others."""
        return cls(**{f.name: flags[f.name] for f in fields(cls) if f.name in flags})

    def options(self) -> dict:
        return asdict(self)

    def check(self, s: PruneSettings) -> None:
        """ValueError, one line, for options or settings this method cannot honour (call it from overrides)."""
        if s.auto and (not self.ranked or s.flops_target):
            ranked = ", ".join(name for name, cls in METHODS.items() if cls.ranked)
            raise ValueError(f"--percent auto cuts the channels that collapsed in one global ranking: methods "
                             f"{ranked}, without --flops-target")

    def prune(self, model: nn.Module, s: PruneSettings, data: SearchData) -> PruneResult:
        """A pruned copy of `model` (float, eval mode, unchanged) and what was decided on the way."""
        raise NotImplementedError

    def flags(self, s: PruneSettings) -> str:
        """Its own flags as a user would type them, after --method and --percent/--flops-target."""
        return ""

    def report_lines(self, s: dict, before: dict, after: dict) -> list[str]:
        """report.md's paragraph on the cut; `s` is report.json's settings (PruneResult.summary())."""
        return []

    def decision(self, s: dict) -> str:
        """One console line on what it decided (report.md says it at length)."""
        return ""

    def tables(self, r: dict) -> list[str]:
        """report.md's sections after the before/after table; `r` is report.json."""
        return ["", "## Channels per layer", "", "| layer | kept | total | kept share |", "|---|---|---|---|",
                *(f"| {x['name']} | {x['kept']} | {x['channels']} | {x['kept'] / x['channels']:.2f} |"
                  for x in r["layers"])]

    def plot_rows(self, result: PruneResult) -> tuple[list[dict], str]:
        """What channels.png draws: rows of name, channels, kept; and the unit."""
        return result.layers, "channels"

    def save_extras(self, result: PruneResult, save_dir, title: str) -> None:
        """Write the files named in `outputs`."""


def finish(pruned: nn.Module) -> nn.Module:
    """The pruned model with the explicit-width yaml that rebuilds it."""
    pruned.yaml = model_yaml(pruned)
    pruned.yaml_file = "pruned.yaml"
    return pruned


def layer_table(before: nn.Module, after: nn.Module) -> list[dict]:
    """Channels of every BN before and after: the per-layer kept/total of the report."""
    kept = {n: m.num_features for n, m in after.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return [{"name": n.removesuffix(".bn"), "channels": m.num_features, "kept": kept[n]}
            for n, m in before.named_modules() if isinstance(m, nn.BatchNorm2d) and n in kept]
