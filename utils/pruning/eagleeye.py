"""EagleEye (Li et al., "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning", ECCV 2020).

Random per-layer widths whose FLOPs land on the target are drawn; each sub-net (channels chosen by filter L1 norm
within each group) has its BatchNorm statistics recomputed on a few training batches ("adaptive BN": the inherited
running statistics belong to the full network and make a sub-net look much worse than it is), then it is scored on a
held-out part of the training split; the best is kept. Scores before and after adaptive BN are both recorded: their
correlation with the finetuned accuracy is the paper's point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.pruning.flops import ChannelCost
from utils.pruning.graph import ChannelGroup
from utils.pruning.selection import keep_top
from utils.pruning.surgery import prune_channels
from utils.torch_utils import recalibrate_bn

TOLERANCE = 0.02  # a candidate's GFLOPs within 2% of the target


@dataclass
class Candidate:
    kept: list[int]  # channels kept per group
    gflops: float
    score_inherited: float = float("nan")  # mAP50 with the full network's BN statistics (constants folded)
    score_adaptive: float = float("nan")  # mAP50 after adaptive BN

    def record(self) -> dict:
        return asdict(self)


def _widths(scale: float, ratios: np.ndarray, full: np.ndarray, min_channels: int, round_to: int) -> np.ndarray:
    k = np.ceil(np.maximum(np.round(scale * ratios * full), min_channels) / round_to) * round_to
    return np.minimum(k, full).astype(np.int64)


def sample_widths(cost: ChannelCost, target: float, rng: np.random.Generator, min_channels: int = 1,
                  round_to: int = 1, tries: int = 100) -> np.ndarray:
    """Kept channels per group: random relative widths (uniform in [0.1, 1]) scaled together until the GFLOPs are
    within TOLERANCE of `target` (bisection on the scale); redrawn when rounding cannot land there."""
    full = cost.full
    for _ in range(tries):
        ratios = rng.uniform(0.1, 1.0, size=len(full))
        lo, hi = 0.0, 1.0 / ratios.min()  # at hi every group is whole
        for _ in range(50):
            mid = (lo + hi) / 2
            if cost.gflops(_widths(mid, ratios, full, min_channels, round_to)) > target:
                hi = mid
            else:
                lo = mid
        for s in (lo, hi):
            k = _widths(s, ratios, full, min_channels, round_to)
            if abs(cost.gflops(k) / target - 1) <= TOLERANCE:
                return k
    raise ValueError(f"no widths within {TOLERANCE:.0%} of {target:.3g} GFLOPs after {tries} draws "
                     f"(the target is below what --min-channels {min_channels} allows, or --round is too coarse)")


@dataclass(frozen=True)
class Draws:
    """What the search draws: n candidates at `target` GFLOPs from `seed`, every group keeping at least min_channels,
    rounded up to a multiple of round_to."""

    target: float
    n: int = 20
    seed: int = 0
    min_channels: int = 1
    round_to: int = 1


def search(model: nn.Module, groups: list[ChannelGroup], scores: Sequence[torch.Tensor], cost: ChannelCost,
           calib: Sequence[torch.Tensor], score: Callable[[nn.Module], float],
           draws: Draws) -> tuple[nn.Module, list[Candidate], int]:
    """Draw the candidates, score each before and after adaptive BN on `calib` batches; return the best sub-net
    (adaptive BN statistics in place), every candidate, and the best one's index."""
    rng = np.random.default_rng(draws.seed)
    candidates: list[Candidate] = []
    best, best_i = None, -1
    for i in tqdm(range(draws.n), desc="eagleeye: candidates", bar_format="{l_bar}{bar:10}{r_bar}"):
        kept = sample_widths(cost, draws.target, rng, draws.min_channels, draws.round_to)
        sub = prune_channels(model, keep_top(scores, kept), groups)
        c = Candidate([int(x) for x in kept], cost.gflops(kept))
        c.score_inherited = score(sub)
        recalibrate_bn(sub, calib)
        c.score_adaptive = score(sub)
        candidates.append(c)
        if best is None or c.score_adaptive > candidates[best_i].score_adaptive:
            best, best_i = sub, i
    return best, candidates, best_i


def plot_candidates(candidates: list[dict], best: int, save_path) -> None:
    """Each candidate's score with inherited BN statistics against its score after adaptive BN (Candidate.record()s)."""
    from utils.plots import plt

    x = [c["score_inherited"] for c in candidates]
    y = [c["score_adaptive"] for c in candidates]
    fig, ax = plt.subplots(figsize=(5, 5), tight_layout=True)
    ax.scatter(x, y, s=18, color="#1f77b4", label="candidate")
    ax.scatter([x[best]], [y[best]], s=60, facecolors="none", edgecolors="#d62728", label="chosen")
    top = max([*x, *y, 1e-3]) * 1.05
    ax.plot([0, top], [0, top], color="#999999", lw=0.8, ls="--", label="no change")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mAP50, inherited BN statistics")
    ax.set_ylabel("mAP50 after adaptive BN")
    ax.set_title(f"EagleEye: {len(candidates)} candidates")
    ax.legend(loc="lower right")
    fig.savefig(save_path, dpi=150)
    plt.close(fig)


def mean_gain(candidates: list[Candidate]) -> float:
    """Mean of (adaptive - inherited) over the candidates: what adaptive BN buys on average."""
    d = [c.score_adaptive - c.score_inherited for c in candidates if not math.isnan(c.score_adaptive)]
    return float(np.mean(d)) if d else float("nan")
