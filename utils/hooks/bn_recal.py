"""A training hook: recompute the EMA model's BN running statistics on training batches after every epoch.

BN running averages (momentum 0.03: about the last 30 batches) lag behind weights that change fast: under a strong
sparsity penalty, and in the first epochs of fine-tuning a pruned model, whose statistics were measured on another
architecture. Validation and the saved checkpoint use those statistics, so they understate the model until they
catch up. Recomputing them on a few batches (adaptive BN) before validation shows the model's true progress.
"""

from __future__ import annotations

import argparse

from utils.engine import Hook, TrainState
from utils.torch_utils import recalibrate_bn


class BNRecalibration(Hook):
    """After every epoch, the EMA model's BN statistics are recomputed on `batches` training batches (0: off)."""

    def __init__(self, batches: int = 8):
        self.batches = batches

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> BNRecalibration | None:
        """--bn-recal N of finetune.py; None when it is 0 or unset."""
        return cls(opt.bn_recal) if getattr(opt, "bn_recal", 0) else None

    def on_epoch_end(self, state: TrainState) -> None:
        if state.ema is None or self.batches < 1 or state.loader is None:
            return
        imgs = []
        for x, *_ in state.loader:  # a fresh pass; the next epoch reseeds the loader, so its order is unchanged
            imgs.append(x.to(state.device, non_blocking=True).float() / 255)
            if len(imgs) >= self.batches:
                break
        recalibrate_bn(state.ema.ema, imgs)
