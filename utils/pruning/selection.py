"""Selection: which channels of each group to keep, given one score per group channel (higher = more important).

`select_channels` cuts one global ranking at a percent (slim, l1, taylor); `select_uniform` cuts every group by the
same share (their --allocation uniform, Torch-Pruning's default), through `keep_for_ratios` (a share per group: the
sensitivity method's); `keep_top` keeps a given number per group (EagleEye's random widths). They only choose
indices: surgery.py removes the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def select_channels(scores: list[torch.Tensor], percent: float, min_channels: int = 1,
                    round_to: int = 1, max_share: float = 1.0) -> tuple[dict[int, torch.Tensor], list[int]]:
    """Per group, the channels to keep. One global ranking of all group channels by score (ties broken by position,
    so the share removed is exactly `percent` even where scores tie); the lowest floor(percent * n) are removed,
    then each group is topped up by score to `min_channels` and to what losing at most `max_share` of it leaves
    (kept_width), and rounded up to a multiple of `round_to` (never past its size). Returns (group -> sorted kept
    indices, the groups that the ranking alone left below min_channels, where the cap did not keep more)."""
    if not scores:
        return {}, []
    flat = torch.cat([s.float().flatten() for s in scores])
    n_remove = min(math.floor(percent * flat.numel() + 1e-6), flat.numel())
    removed = torch.zeros(flat.numel(), dtype=torch.bool)
    removed[torch.sort(flat, stable=True).indices[:n_remove]] = True
    keep, clamped = {}, []
    for k, (s, gone) in enumerate(zip(scores, removed.split([s.numel() for s in scores]))):
        n = s.numel()
        above = int((~gone).sum())
        floor = kept_width(n, max_share) if max_share < 1 else 1  # the cap's, above min_channels: not clamped
        need = min(max(above, min_channels, floor), n)
        if above < min(min_channels, n) and floor <= min_channels:
            clamped.append(k)
        need = min(math.ceil(need / round_to) * round_to, n)
        # the ranking's survivors first (a stable sort keeps its tie-break), then the best of the rest
        order = torch.sort(s.float(), descending=True, stable=True).indices
        keep[k] = torch.cat([order[~gone[order]], order[gone[order]]])[:need].sort().values
    return keep, clamped


def keep_top(scores: Sequence[torch.Tensor], kept: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per group, the kept[k] best-scoring channels (sorted indices)."""
    return {k: torch.sort(s, descending=True, stable=True).indices[:n].sort().values
            for k, (s, n) in enumerate(zip(scores, kept))}


def kept_width(channels: int, ratio: float, min_channels: int = 1, round_to: int = 1) -> int:
    """Channels a group keeps when `ratio` of them are removed, at least min_channels, rounded up to round_to."""
    k = max(math.ceil(round((1 - ratio) * channels, 6)), min_channels)
    return min(math.ceil(k / round_to) * round_to, channels)


def select_uniform(scores: list[torch.Tensor], ratio: float, min_channels: int = 1,
                   round_to: int = 1) -> tuple[dict[int, torch.Tensor], list[int]]:
    """Per group, its best-scoring channels after removing the share `ratio` of each group (kept_width), so scores
    are compared only within a group. Returns what select_channels does; clamped: the groups min_channels topped up."""
    clamped = [k for k, s in enumerate(scores) if kept_width(s.numel(), ratio) < min(min_channels, s.numel())]
    return keep_for_ratios(scores, [ratio] * len(scores), min_channels, round_to), clamped


def keep_for_ratios(scores: Sequence[torch.Tensor], ratios: Sequence[float], min_channels: int = 1,
                    round_to: int = 1) -> dict[int, torch.Tensor]:
    """Per group, its kept_width(channels, ratios[k]) best-scoring channels (the sensitivity method's per-layer
    ratios; one ratio for all: select_uniform)."""
    return keep_top(scores, [kept_width(len(s), r, min_channels, round_to) for s, r in zip(scores, ratios)])
