"""What the data-driven methods learn from: SearchData (training batches, a held-out scorer, the loss), the YOLOv5
training loss they take gradients of or score by, and the first batches of a loader. prune.py's search_data and
benchmarks/tp_prune.py fill it from a dataset; tests fill it by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from utils.files import yaml_load
from utils.hyp import scale_hyp
from utils.loss import ComputeLoss
from utils.pruning.sensitivity import Curve

HYP = Path(__file__).resolve().parents[2] / "data/hyps/hyp.scratch-low.yaml"

Batch = tuple[torch.Tensor, torch.Tensor]  # images (float, 0..1) and targets (image, class, x, y, w, h)


@dataclass
class SearchData:
    """What the data-driven methods use, drawn from the training split (prune.py's search_data)."""

    batches: Sequence[Batch] = ()  # (images in 0..1, targets): adaptive BN, taylor
    score: Callable[[nn.Module], float] | None = None  # a model -> mAP50 on held-out training images
    loss: Callable[[nn.Module], Callable] | None = None  # model -> its loss fn: (model output, targets) -> scalar
    curves: tuple[float, list[Curve]] | None = None  # a finished sensitivity analysis to reuse (base score, curves)
    held: Sequence[Batch] = ()  # held-out (images, targets): the sensitivity loss score
    sensitivity_score: str = "loss"  # what the sensitivity analysis scores: "loss" (held) or "map" (score)
    sensitivity_calib: int = 0  # > 0: the loss analysis recalibrates BN on only this many of the batches

    @property
    def images(self) -> list[torch.Tensor]:
        return [b[0] for b in self.batches]

    def need(self, flag: str, *what: str) -> None:
        """ValueError naming `flag` (e.g. "--method taylor") when any of the fields `what` is missing."""
        missing = {"batches": not self.batches, "score": self.score is None, "loss": self.loss is None,
                   "held": not self.held}
        if any(missing[w] for w in what):
            raise ValueError(f"{flag} needs --data (training batches and held-out images)")


def yolo_loss(nl: int, nc: int, imgsz: int) -> Callable[[nn.Module], Callable]:
    """SearchData.loss: a model -> its YOLOv5 training loss (hyp.scratch-low's gains scaled as train.py scales them)
    as a function of (model output in train or eval mode, targets) -> scalar."""
    hyp = scale_hyp(yaml_load(HYP), nl, nc, imgsz, 0.0)

    def loss(m: nn.Module):
        fn = ComputeLoss(m, hyp=hyp)
        return lambda out, targets: fn(out[1] if isinstance(out, tuple) else out, targets)[0].sum()

    return loss


def first_batches(loader: Iterable, images: int) -> list[Batch]:
    """(images in 0..1, targets) batches from the start of `loader` until they hold at least `images` images."""
    out, n = [], 0
    for imgs, targets, *_ in loader:
        out.append((imgs.float() / 255, targets))
        n += len(imgs)
        if n >= images:
            break
    return out
