"""Which channels are already dead before a cut: the collapsed share, the live channels a cut removes, --percent auto.

A channel has collapsed when its score is below COLLAPSE_FRACTION of a strong channel's, the REFERENCE_QUANTILE of
all scores (a high quantile, not the median: after sparse training more than half the channels may have collapsed).
For slim the score is |gamma|, so this is the spike at 0 of bn_gamma.png; for l1 and taylor it is a filter that is
all but zero, or a channel whose removal changes the loss by almost nothing. Removing collapsed channels (with their
constant outputs folded) is nearly free; removing live ones costs accuracy until the model is fine-tuned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

COLLAPSE_FRACTION = 0.01
REFERENCE_QUANTILE = 0.9
AUTO_MIN = 0.05  # --percent auto refuses below this share: cutting less is not worth a pruned model


@dataclass(frozen=True)
class Collapse:
    share: float  # of all group channels, counted as --percent counts them
    threshold: float  # scores strictly below it have collapsed
    channels: int  # group channels in all

    def record(self) -> dict:
        return {"collapsed_share": self.share, "collapse_threshold": self.threshold}


def collapse(scores: Sequence[torch.Tensor]) -> Collapse:
    """The collapsed share of these per-group channel scores."""
    if not scores:
        return Collapse(0.0, 0.0, 0)
    flat = torch.cat([s.detach().float().flatten() for s in scores])
    threshold = COLLAPSE_FRACTION * torch.quantile(flat, REFERENCE_QUANTILE).item()
    return Collapse(int((flat < threshold).sum()) / flat.numel(), threshold, flat.numel())


def live_removed(scores: Sequence[torch.Tensor], keep: Mapping[int, torch.Tensor], threshold: float) -> int:
    """Removed channels (not in `keep`) that had not collapsed."""
    n = 0
    for k, s in enumerate(scores):
        gone = torch.ones(s.numel(), dtype=torch.bool)
        gone[keep[k]] = False
        n += int((gone & (s.float() >= threshold)).sum())
    return n


def auto_percent(c: Collapse, safe: float) -> float:
    """--percent auto: the collapsed share, capped by the largest percent that empties no layer. ValueError (one
    line) when almost nothing collapsed."""
    if c.share < AUTO_MIN:
        raise ValueError(f"--percent auto: only {c.share:.1%} of the prunable channels have collapsed (score < "
                         f"{c.threshold:.3g}), below the {AUTO_MIN:.0%} worth cutting; sparse-train longer or harder "
                         "(train_sparse.py --shrink, --polarize 1.2) or give --percent")
    return min(c.share, safe)


def cut_warning(remedy: str, removed_share: float, c: Collapse, live: int) -> str:
    """The one-line warning of a cut that removes `live` channels that had not collapsed; `remedy`: what to change
    (the method's)."""
    return (f"WARNING: this cut removes {removed_share:.1%} of the prunable channels but only {c.share:.1%} had "
            f"collapsed (score < {c.threshold:.3g}): {live} live channels ({live / max(c.channels, 1):.1%}) go, so "
            f"expect a large mAP drop until fine-tuned. Remedy: {remedy}")
