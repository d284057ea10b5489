"""A training hook that keeps the zeros of an unstructured-pruned checkpoint (prune.py --method unstructured) zero
through fine-tuning."""

from __future__ import annotations

import argparse

import torch

from utils.engine import Hook, TrainState
from utils.pruning.unstructured import conv_weights


class KeepZeros(Hook):
    """Re-applies the zero pattern of the model's conv weights after every optimizer step, so unstructured sparsity
    survives fine-tuning (momentum and weight decay would otherwise revive the zeros). The EMA, which averages the
    masked weights, keeps them zero too."""

    def __init__(self):
        self.masks: dict[str, torch.Tensor] = {}

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> KeepZeros | None:
        """finetune.py sets opt.keep_zeros for a checkpoint pruned unstructured; None otherwise."""
        return cls() if getattr(opt, "keep_zeros", False) else None

    def on_train_start(self, state: TrainState) -> None:
        self.masks = {n: m.weight.detach() != 0 for n, m in conv_weights(state.bare).items()
                      if bool((m.weight == 0).any())}

    @torch.no_grad()
    def after_step(self, state: TrainState) -> None:
        convs = conv_weights(state.bare)
        for n, mask in self.masks.items():
            convs[n].weight.mul_(mask)
