"""Per-layer sensitivity: prune one group alone at ratios 0.1..0.9 and watch the held-out mAP50.

Each group (the channels one conv owns, or a residual group's shared channels) is cut alone, keeping its channels with
the largest filter L1 norms, the rest of the network whole; the sub-net's BN statistics are recomputed on a few
training batches (adaptive BN, as EagleEye does: inherited statistics would blame the layer for a mismatch that one
pass over data removes) and it is scored on held-out training images. The curves answer "how do I choose --percent"
layer by layer; `choose_ratios` turns them into per-layer ratios that each cost at most a given mAP50 drop.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.pruning.eagleeye import keep_top
from utils.pruning.groups import ChannelGroup
from utils.pruning.surgery import prune_channels
from utils.torch_utils import recalibrate_bn

RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
FIELDS = ("group", "layer", "channels", "ratio", "kept", "mAP50")


@dataclass
class Curve:
    group: int  # index in the model's groups
    layer: str  # the group's first BN without ".bn" (e.g. model.4.cv1), the name the report and plot use
    channels: int
    ratios: list[float]
    kept: list[int]
    scores: list[float]  # mAP50 with the group alone pruned at each ratio

    def drops(self, base: float) -> list[float]:
        return [base - s for s in self.scores]


def kept_width(channels: int, ratio: float, min_channels: int = 1, round_to: int = 1) -> int:
    """Channels a group keeps when `ratio` of them are removed, at least min_channels, rounded up to round_to."""
    k = max(math.ceil(round((1 - ratio) * channels, 6)), min_channels)
    return min(math.ceil(k / round_to) * round_to, channels)


def layer_name(group: ChannelGroup) -> str:
    return group.bns[0].removesuffix(".bn")


def analyze(model: nn.Module, groups: list[ChannelGroup], scores: Sequence[torch.Tensor],
            calib: Sequence[torch.Tensor], score: Callable[[nn.Module], float], ratios: Sequence[float] = RATIOS,
            min_channels: int = 1, round_to: int = 1) -> tuple[float, list[Curve]]:
    """(mAP50 of the model as it is, one curve per group). `scores`: channel importance within each group (the
    highest are kept); `calib`: image batches for adaptive BN; `score`: a model -> mAP50 on held-out images.
    A ratio that keeps as many channels as the previous one reuses its score instead of evaluating again."""
    base = score(model)
    curves = []
    bar = tqdm(total=len(groups) * len(ratios), desc="sensitivity", bar_format="{l_bar}{bar:10}{r_bar}")
    for k, g in enumerate(groups):
        c = Curve(k, layer_name(g), g.channels, list(ratios), [], [])
        for r in ratios:
            n = kept_width(g.channels, r, min_channels, round_to)
            if c.kept and n == c.kept[-1]:
                s = c.scores[-1]
            elif n == g.channels:
                s = base
            else:
                sub = prune_channels(model, {k: keep_top([scores[k]], [n])[0]}, groups)
                recalibrate_bn(sub, calib)
                s = score(sub)
            c.kept.append(n)
            c.scores.append(float(s))
            bar.update()
        curves.append(c)
    bar.close()
    return base, curves


def choose_ratios(curves: Sequence[Curve], base: float, max_drop: float) -> list[float]:
    """Per curve, the largest ratio whose mAP50 drop, and every smaller ratio's, is at most max_drop (0: none)."""
    out = []
    for c in curves:
        chosen = 0.0
        for r, d in zip(c.ratios, c.drops(base)):
            if d > max_drop:
                break
            chosen = r
        out.append(chosen)
    return out


def keep_for_ratios(scores: Sequence[torch.Tensor], ratios: Sequence[float], min_channels: int = 1,
                    round_to: int = 1) -> dict[int, torch.Tensor]:
    return keep_top(scores, [kept_width(len(s), r, min_channels, round_to) for s, r in zip(scores, ratios)])


def drop_for_flops(curves: Sequence[Curve], base: float, gflops: Callable[[list[int]], float], target: float,
                   min_channels: int = 1, round_to: int = 1) -> float:
    """The smallest max-drop whose chosen ratios cost at most `target` GFLOPs (`gflops`: kept widths -> GFLOPs).
    Only the measured drops can change the choice, so they are the candidates, tried in increasing order."""
    def cost(x: float) -> float:
        rs = choose_ratios(curves, base, x)
        return gflops([kept_width(c.channels, r, min_channels, round_to) for c, r in zip(curves, rs)])

    levels = sorted({max(d, 0.0) for c in curves for d in c.drops(base)})
    for x in levels:
        if cost(x) <= target:
            return x
    raise ValueError(f"even pruning every layer at its largest analysed ratio leaves {cost(math.inf):.3g} GFLOPs "
                     f"> the target {target:.3g}")


def ranking(curves: Sequence[Curve], base: float) -> list[tuple[str, float]]:
    """(layer, mean mAP50 drop over the ratios), safest first."""
    return sorted(((c.layer, float(np.mean(c.drops(base)))) for c in curves), key=lambda x: x[1])


def save_csv(path: Path, base: float, curves: Sequence[Curve]) -> None:
    """One row per (group, ratio), plus ratio-0 rows holding the unpruned score."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for c in curves:
            w.writerow((c.group, c.layer, c.channels, 0.0, c.channels, f"{base:.6f}"))
            for r, n, s in zip(c.ratios, c.kept, c.scores):
                w.writerow((c.group, c.layer, c.channels, r, n, f"{s:.6f}"))


def load_csv(path: Path) -> tuple[float, list[Curve]]:
    """What save_csv wrote: (base score, curves). ValueError with the reason for a file that is not one."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or set(FIELDS) - set(rows[0]):
            raise ValueError(f"columns {', '.join(FIELDS)} expected")
        curves: dict[int, Curve] = {}
        base = float("nan")
        for r in rows:
            k = int(r["group"])
            c = curves.setdefault(k, Curve(k, r["layer"], int(r["channels"]), [], [], []))
            if float(r["ratio"]) == 0:
                base = float(r["mAP50"])
            else:
                c.ratios.append(float(r["ratio"]))
                c.kept.append(int(r["kept"]))
                c.scores.append(float(r["mAP50"]))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a sensitivity.csv written by prune.py --sensitivity: {e}") from None
    if math.isnan(base):
        raise ValueError(f"{path} has no ratio-0 rows (the unpruned score)")
    return base, [curves[k] for k in sorted(curves)]


def plot(path: Path, base: float, curves: Sequence[Curve], title: str = "") -> list[tuple[str, list, list]]:
    """mAP50 against the ratio pruned, one curve per layer, coloured by depth; the unpruned score dashed.
    Returns what each layer's line draws: (layer, ratios, scores)."""
    from utils.plots import plt

    fig, ax = plt.subplots(figsize=(9, 6), tight_layout=True)
    cmap = plt.get_cmap("viridis")
    n = max(len(curves) - 1, 1)
    drawn = []
    for i, c in enumerate(curves):
        (line,) = ax.plot(c.ratios, c.scores, color=cmap(i / n), lw=1.0, alpha=0.85, marker=".", ms=3)
        drawn.append((c.layer, [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]))
    worst = max(curves, key=lambda c: np.mean(c.drops(base)), default=None)
    if worst is not None:
        ax.plot(worst.ratios, worst.scores, color="#d62728", lw=2.0, label=f"most fragile: {worst.layer}")
    ax.axhline(base, color="#555555", ls="--", lw=1.0, label=f"unpruned {base:.3f}")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(curves) - 1))
    fig.colorbar(sm, ax=ax, label="group (input -> head)")
    ax.set_xlabel("share of the layer's channels removed (that layer alone, adaptive BN)")
    ax.set_ylabel("mAP50 on held-out training images")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(base, max((max(c.scores) for c in curves), default=0)) * 1.05 + 1e-3)
    ax.set_title(title or f"Sensitivity of {len(curves)} layers", fontsize=9)
    ax.legend(loc="lower left")
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return drawn
