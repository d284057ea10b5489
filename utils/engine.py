"""The one training loop (one epoch of it) and the hooks other scripts use to add behaviour without copying it.

train.py owns everything around this loop (data, model, optimizer, checkpoints). train_sparse.py adds an L1
penalty on BN weights through `Hook.after_backward`; finetune.py adds a distillation term through `Hook.loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils.ema import ModelEMA
from utils.errors import UserError
from utils.log import LOGGER
from utils.optim import Warmup
from utils.torch_utils import de_parallel

MAX_GRAD_NORM = 10.0


@dataclass
class TrainState:
    """What a hook may look at (and, with care, change) while training runs."""

    model: nn.Module  # possibly wrapped in DistributedDataParallel; use `.bare` for the model itself
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    hyp: dict
    epochs: int
    nb: int  # batches per epoch
    save_dir: Path
    device: torch.device
    epoch: int = 0
    ni: int = 0  # batches seen since the start of training (resumes continue the count)
    opt: Any = None  # the parsed command line
    warmup: Warmup | None = None  # the schedule of learning rates and accumulation, for hooks that plan ahead
    loader: Any = None  # the training DataLoader
    extra: dict = field(default_factory=dict)  # scratch space shared by hooks

    @property
    def bare(self) -> nn.Module:
        return de_parallel(self.model)


class Hook:
    """Behaviour added to the training loop. Override what you need; every method is called on every rank unless
    it says otherwise."""

    def on_train_start(self, state: TrainState) -> None:
        """Once, after the model, optimizer and data exist and before the first batch."""

    def loss(self, state: TrainState, imgs: torch.Tensor, preds: list[torch.Tensor],
             targets: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term, added to the detection loss (which is the per-image mean times the batch size)."""
        return None

    def after_backward(self, state: TrainState) -> None:
        """Before each optimizer step: gradients are accumulated, unscaled under AMP and clipped (max norm 10);
        what a hook adds here is not clipped."""

    def after_step(self, state: TrainState) -> None:
        """After each optimizer step, before the EMA follows it."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After an epoch's last optimizer step, before validation and checkpoints."""

    def epoch_columns(self, state: TrainState) -> dict[str, float]:
        """Extra results.csv columns for the epoch that just ended (rank 0 only)."""
        return {}

    def on_train_end(self, state: TrainState) -> None:
        """Once, after the last epoch and the final checkpoints (rank 0 only)."""


def multi_scale(imgs: torch.Tensor, imgsz: int, stride: int, rng: np.random.Generator) -> torch.Tensor:
    """Resize the batch to a random size in [0.5, 1.5] x imgsz, a multiple of the stride."""
    sz = int(rng.uniform(imgsz * 0.5, imgsz * 1.5 + stride)) // stride * stride
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / stride) * stride for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


def train_one_epoch(state: TrainState, loader, compute_loss, warmup: Warmup, scaler: torch.amp.GradScaler,
                    hooks: list[Hook] = (), world_size: int = 1, multi_scale_rng: np.random.Generator | None = None,
                    imgsz: int = 640, show_bar: bool = True) -> np.ndarray:
    """Train for one epoch; return the mean [box, obj, cls] losses. The optimizer steps once per `accumulate`
    batches (nominal batch 64); the EMA follows every step."""
    model, optimizer, device = state.model, state.optimizer, state.device
    model.train()
    amp = scaler.is_enabled()
    stride = int(state.bare.stride.max())
    mloss = torch.zeros(3, device=device)
    last_step = state.nb * state.epoch - 1  # each epoch starts a fresh accumulation, so a resume replays it exactly
    optimizer.zero_grad()
    bar = tqdm(enumerate(loader), total=state.nb, disable=not show_bar, bar_format="{l_bar}{bar:10}{r_bar}")
    for i, (imgs, targets, _, _) in bar:
        ni = i + state.nb * state.epoch
        state.ni = ni
        accumulate = warmup.step(optimizer, ni, state.epoch)
        imgs = imgs.to(device, non_blocking=True).float() / 255
        targets = targets.to(device)
        if multi_scale_rng is not None:
            imgs = multi_scale(imgs, imgsz, stride, multi_scale_rng)
        with torch.autocast(device_type=device.type, enabled=amp):
            preds = model(imgs)
            loss, loss_items = compute_loss(preds, targets)
            for h in hooks:
                extra = h.loss(state, imgs, preds, targets)
                if extra is not None:
                    loss = loss + extra
        if not amp and not torch.isfinite(loss):  # under AMP the scaler skips steps with inf/NaN gradients
            raise UserError(f"loss is {loss.item()} at epoch {state.epoch}, batch {i}: training diverged "
                            "(try a lower --hyp lr0, or check the labels)")
        scaler.scale(loss * world_size).backward()  # DDP averages gradients over ranks; upstream scales it back
        if ni - last_step >= accumulate:
            scaler.unscale_(optimizer)
            # clip the loss gradients only: a hook's term (the L1 step on gamma) keeps its exact size, so the
            # shrink budget train_sparse.py prints holds (a clipped x100 gamma lr once shrank gammas 7x slower)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_GRAD_NORM)
            for h in hooks:
                h.after_backward(state)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            for h in hooks:
                h.after_step(state)
            if state.ema is not None:
                state.ema.update(model)
            last_step = ni
        mloss = (mloss * i + loss_items) / (i + 1)
        if show_bar:
            mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if device.type == "cuda" else "cpu"
            bar.set_description(("%11s" * 2 + "%11.4g" * 4) % (f"{state.epoch}/{state.epochs - 1}", mem, *mloss,
                                                               targets.shape[0]) + f"{imgs.shape[-1]:>11}")
    return mloss.cpu().numpy()


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs (0 or less: never)."""

    def __init__(self, patience: int = 100):
        self.best_fitness, self.best_epoch = -1.0, 0
        self.patience = patience if patience > 0 else float("inf")

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = epoch - self.best_epoch >= self.patience
        if stop:
            LOGGER.info(f"Stopping early: no improvement in the last {self.patience} epochs; best epoch was "
                        f"{self.best_epoch}. Use --patience 0 to disable.")
        return stop


BAR_HEADER = ("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")
