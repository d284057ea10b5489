"""Per-layer sensitivity: prune one group alone at a few ratios and watch a score on held-out training images.

Each group (the channels one conv owns, or a residual group's shared channels) is cut alone, keeping its channels with
the largest filter L1 norms, the rest of the network whole; the sub-net's BN statistics are recomputed on a few
training batches (adaptive BN, as EagleEye does: inherited statistics would blame the layer for a mismatch that one
pass over data removes) and it is scored on held-out training images. Two scores:
- `loss` (the default): the YOLOv5 training loss per image, eval mode, one forward per held-out batch and no NMS. A
  layer's drop is the relative increase over the unpruned model given the same adaptive BN. Only the layers from the
  first one a cut changes are run: the ones before give every sub-net the same activations, computed once per batch.
- `mAP50`: held-out mAP50 after NMS, the whole sub-net run per evaluation; a drop is the mAP50 lost. The faithful and
  slow reference (benchmarks/sensitivity_rank.py compares the layer rankings of the two).
The curves answer "how do I choose --percent" layer by layer; `choose_ratios` turns them into per-layer ratios that
each cost at most a given drop.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.pruning.graph import ChannelGroup
from utils.pruning.selection import keep_top, kept_width
from utils.pruning.surgery import prune_channels
from utils.torch_utils import recalibrate_bn

RATIOS = (0.25, 0.5, 0.75)
FIELDS = ("group", "layer", "channels", "ratio", "kept")  # then one column named by the metric
METRICS = {"mAP50": "mAP50 on held-out training images",
           "loss": "YOLOv5 loss per image on held-out training images (lower is better)"}
DROPS = {"mAP50": "mAP50 lost", "loss": "relative increase of the held-out loss"}  # what a curve's drop means
EXAMPLE_DROP = {"mAP50": 0.02, "loss": 0.05}  # a --max-drop to suggest
# The loss analysis's data (prune.py's search_data), each image a forward per evaluation. On yolov5n/shapes at 320 (50
# layers x 3 ratios), 1, 2 or 8 calibration batches of 16 and 16 to 80 held-out images ranked the layers alike
# (Spearman >= 0.98 with the largest of them, 0.90-0.92 against mAP50); these keep a margin.
HELD_IMAGES = 64
CALIB_BATCHES = 2


def drop(metric: str, base: float, score: float) -> float:
    """What pruning cost: mAP50 lost, or the loss's increase relative to the unpruned loss (scale-free)."""
    return (score - base) / base if metric == "loss" else base - score


@dataclass
class Curve:
    group: int  # index in the model's groups
    layer: str  # the group's first BN without ".bn" (e.g. model.4.cv1), the name the report and plot use
    channels: int
    ratios: list[float]
    kept: list[int]
    scores: list[float]  # the metric with the group alone pruned at each ratio
    metric: str = "mAP50"  # a key of METRICS

    def drops(self, base: float) -> list[float]:
        return [drop(self.metric, base, s) for s in self.scores]


@dataclass(frozen=True)
class Cuts:
    """The shares of a layer the analysis removes, and the rules every cut width obeys."""

    ratios: Sequence[float] = RATIOS
    min_channels: int = 1
    round_to: int = 1

    def kept(self, channels: int, ratio: float) -> int:
        return kept_width(channels, ratio, self.min_channels, self.round_to)


def layer_name(group: ChannelGroup) -> str:
    return group.bns[0].removesuffix(".bn")


def analyze(model: nn.Module, groups: list[ChannelGroup], scores: Sequence[torch.Tensor],
            calib: Sequence[torch.Tensor], score: Callable[[nn.Module], float],
            cuts: Cuts = Cuts()) -> tuple[float, list[Curve]]:
    """The mAP50 analysis: (mAP50 of the model as it is, one curve per group). `scores`: channel importance within
    each group (the highest are kept); `calib`: image batches for adaptive BN; `score`: a model -> mAP50 on held-out
    images."""
    def evaluate(sub: nn.Module) -> float:
        recalibrate_bn(sub, calib)
        return score(sub)

    base = score(model)
    return base, _curves(model, groups, scores, evaluate, base, "mAP50", cuts)


@torch.no_grad()
def analyze_loss(model: nn.Module, groups: list[ChannelGroup], scores: Sequence[torch.Tensor],
                 calib: Sequence[torch.Tensor], held: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 loss: Callable[[object, torch.Tensor], torch.Tensor],
                 cuts: Cuts = Cuts()) -> tuple[float, list[Curve]]:
    """The loss analysis: (held-out loss per image of the unpruned model after adaptive BN on `calib`, one curve per
    group). `held`: (images in 0..1, targets) batches; `loss`: (model output, targets) -> the batch's summed loss
    (SearchData.loss of `model`: a sub-net keeps the anchors and strides it reads)."""
    scorer = SuffixLoss(model, calib, held, loss)
    return scorer.base, _curves(model, groups, scores, scorer, scorer.base, "loss", cuts)


def _curves(model: nn.Module, groups: list[ChannelGroup], scores: Sequence[torch.Tensor],
            evaluate: Callable[[nn.Module], float], base: float, metric: str, cuts: Cuts) -> list[Curve]:
    """Each group cut alone at each ratio and `evaluate`d. A ratio that keeps as many channels as the previous one
    reuses its score instead of evaluating again."""
    curves = []
    ratios = cuts.ratios
    bar = tqdm(total=len(groups) * len(ratios), desc=f"sensitivity ({metric})", bar_format="{l_bar}{bar:10}{r_bar}")
    for k, g in enumerate(groups):
        c = Curve(k, layer_name(g), g.channels, list(ratios), [], [], metric)
        for r in ratios:
            n = cuts.kept(g.channels, r)
            if c.kept and n == c.kept[-1]:
                s = c.scores[-1]
            elif n == g.channels:
                s = base
            else:
                s = evaluate(prune_channels(model, {k: keep_top([scores[k]], [n])[0]}, groups))
            c.kept.append(n)
            c.scores.append(float(s))
            bar.update()
        curves.append(c)
    bar.close()
    return curves


def first_changed(model: nn.Module, sub: nn.Module) -> int:
    """Index of the first layer of `sub` whose parameters or buffers differ from `model`'s (len(sub.model): none)."""
    for i, (a, b) in enumerate(zip(model.model, sub.model)):
        sa, sb = a.state_dict(), b.state_dict()
        if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k]) for k in sa):
            return i
    return len(sub.model)


def _run(layers: Iterable[nn.Module], save: Sequence[int], x, y: list):
    """DetectionModel.forward resumed: `layers` continue from layer len(y); y holds the outputs later layers read
    (None for the others) and grows by one entry a layer."""
    for m in layers:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x if m.i in save else None)
    return x


class _Suffix(nn.Module):
    """The layers of `net` from `start` on, run on a _Prefix state (x, y); holds no other layer, so recalibrate_bn
    recomputes only these BatchNorms."""

    def __init__(self, net: nn.Module, start: int):
        super().__init__()
        self.layers, self.save = nn.ModuleList(list(net.model)[start:]), net.save

    def forward(self, state: tuple):
        x, y = state
        return _run(self.layers, self.save, x, list(y))


class _Prefix:
    """Per batch, what the layers from `at` on read of `net`'s earlier ones: (last output, outputs kept for later).
    Moving forward runs only the layers in between; moving back starts again from the images."""

    def __init__(self, net: nn.Module, images: Sequence[torch.Tensor]):
        self.net, self.images = net, list(images)
        self.at, self.states = 0, [(x, []) for x in self.images]

    def states_at(self, i: int) -> list[tuple]:
        if i < self.at:
            self.at, self.states = 0, [(x, []) for x in self.images]
        if i > self.at:
            layers, states = list(self.net.model)[self.at:i], []
            for x, y in self.states:
                y = list(y)  # a copy: the states at `at` may be in use
                states.append((_run(layers, self.net.save, x, y), y))
            self.at, self.states = i, states
        return self.states


class SuffixLoss:
    """A sub-net of `model` -> its loss per image on the held-out batches after adaptive BN on `calib`, as if
    recalibrate_bn and the loss ran on the whole sub-net, but running only the layers from the first one that differs
    from `model`. Exact: the earlier layers are `model`'s; recalibrating them gives every sub-net the same statistics
    (those of `model` recalibrated, `base`'s model), and during recalibration they run on batch statistics."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, calib: Sequence[torch.Tensor],
                 held: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 loss: Callable[[object, torch.Tensor], torch.Tensor]):
        self.model, self.loss, self.targets = model, loss, [t for _, t in held]
        self.images = sum(len(x) for x, _ in held)
        ref = deepcopy(model).eval()
        recalibrate_bn(ref, calib)
        batch_stats = deepcopy(model).eval()  # the prefix as recalibrate_bn runs it: BNs on batch statistics
        for m in batch_stats.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        self.calib, self.held = _Prefix(batch_stats, calib), _Prefix(ref, [x for x, _ in held])
        self.base = self._score(_Suffix(ref, 0), 0)

    def _score(self, suffix: nn.Module, start: int) -> float:
        total = sum(float(self.loss(suffix(s), t)) for s, t in zip(self.held.states_at(start), self.targets))
        return total / self.images

    @torch.no_grad()
    def __call__(self, sub: nn.Module) -> float:
        start = first_changed(self.model, sub)
        if start == len(sub.model):
            return self.base
        suffix = _Suffix(sub, start)
        recalibrate_bn(suffix, self.calib.states_at(start))
        return self._score(suffix, start)


def choose_ratios(curves: Sequence[Curve], base: float, max_drop: float) -> list[float]:
    """Per curve, the largest ratio whose drop (Curve.drops: mAP50 lost, or the relative loss increase), and every
    smaller ratio's, is at most max_drop (0: none)."""
    out = []
    for c in curves:
        chosen = 0.0
        for r, d in zip(c.ratios, c.drops(base)):
            if d > max_drop:
                break
            chosen = r
        out.append(chosen)
    return out


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
    """(layer, mean drop over the ratios), safest first."""
    return sorted(((c.layer, float(np.mean(c.drops(base)))) for c in curves), key=lambda x: x[1])


def save_csv(path: Path, base: float, curves: Sequence[Curve]) -> None:
    """One row per (group, ratio), plus ratio-0 rows holding the unpruned score; the score column is named by the
    metric (mAP50 or loss)."""
    metric = curves[0].metric if curves else "mAP50"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow((*FIELDS, metric))
        for c in curves:
            w.writerow((c.group, c.layer, c.channels, 0.0, c.channels, float(base)))  # floats as repr: exact round trip
            for r, n, s in zip(c.ratios, c.kept, c.scores):
                w.writerow((c.group, c.layer, c.channels, r, n, float(s)))


def load_csv(path: Path) -> tuple[float, list[Curve]]:
    """What save_csv wrote (or an older file with an mAP50 column): (base score, curves). ValueError with the reason
    for a file that is not one."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        metric = next((m for m in METRICS if rows and m in rows[0]), None)
        if metric is None or set(FIELDS) - set(rows[0]):
            raise ValueError(f"columns {', '.join(FIELDS)} and one of {', '.join(METRICS)} expected")
        curves: dict[int, Curve] = {}
        base = float("nan")
        for r in rows:
            k = int(r["group"])
            c = curves.setdefault(k, Curve(k, r["layer"], int(r["channels"]), [], [], [], metric))
            if float(r["ratio"]) == 0:
                base = float(r[metric])
            else:
                c.ratios.append(float(r["ratio"]))
                c.kept.append(int(r["kept"]))
                c.scores.append(float(r[metric]))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a sensitivity.csv written by prune.py --sensitivity: {e}") from None
    if math.isnan(base):
        raise ValueError(f"{path} has no ratio-0 rows (the unpruned score)")
    return base, [curves[k] for k in sorted(curves)]


def plot(path: Path, base: float, curves: Sequence[Curve], title: str = "") -> list[tuple[str, list, list]]:
    """The score (mAP50 or loss) against the ratio pruned, one curve per layer, coloured by depth; the unpruned
    score dashed.
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
    ax.axhline(base, color="#555555", ls="--", lw=1.0, label=f"unpruned {base:.4g}")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(curves) - 1))
    fig.colorbar(sm, ax=ax, label="group (input -> head)")
    ax.set_xlabel("share of the layer's channels removed (that layer alone, adaptive BN)")
    ax.set_ylabel(METRICS[curves[0].metric if curves else "mAP50"])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(base, max((max(c.scores) for c in curves), default=0)) * 1.05 + 1e-3)
    ax.set_title(title or f"Sensitivity of {len(curves)} layers", fontsize=9)
    ax.legend(loc="best")
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return drawn
