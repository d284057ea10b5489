"""The one training loop and the hooks other scripts use to add behaviour without copying it.

`fit` runs the epochs: `train_one_epoch`, then (rank 0) validation of the EMA model, a results.csv row and the
checkpoints; at the end the final checkpoints are stripped and evaluated. utils/trainer.py builds what it runs on
(data, model, optimizer: a `TrainState`). train_sparse.py adds an L1 penalty on BN weights through
`Hook.after_backward`; finetune.py adds a distillation term through `Hook.loss` (the hooks: utils/hooks/).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils import distributed as ddp
from utils.checkpoint import load_model, save_checkpoint, strip_optimizer, training_checkpoint
from utils.ema import ModelEMA
from utils.errors import UserError
from utils.evaluate import evaluate, print_results
from utils.files import atomic_write
from utils.log import LOGGER, colorstr
from utils.metrics import fitness
from utils.optim import Warmup
from utils.plots import plot_results
from utils.results import RESULT_KEYS, write_results_row
from utils.torch_utils import de_parallel, model_info

MAX_GRAD_NORM = 10.0
COST_PROBE = 8  # batches timed at the start of a CPU run to say what the whole run will cost
SMALL = "--cfg yolov5n.yaml --imgsz 320 --batch-size 8 --hyp data/hyps/hyp.small.yaml --epochs 30"
BAR_HEADER = ("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")


@dataclass
class TrainState:
    """What a hook may look at (and, with care, change) while training runs, and the plumbing the loop runs on."""

    model: nn.Module  # possibly wrapped in DistributedDataParallel; use `.bare` for the model itself
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    hyp: dict
    epochs: int
    nb: int  # batches per epoch
    save_dir: Path
    device: torch.device
    epoch: int = 0
    start_epoch: int = 0  # the first epoch of this run (after --resume, the one it continues at)
    ni: int = 0  # batches seen since the start of training (resumes continue the count)
    opt: Any = None  # the parsed command line
    warmup: Warmup | None = None  # the schedule of learning rates and accumulation, for hooks that plan ahead
    loader: Any = None  # the training DataLoader
    extra: dict = field(default_factory=dict)  # scratch space shared by hooks
    # the loop's plumbing
    compute_loss: Callable | None = None  # (preds, targets) -> (loss, [box, obj, cls] items)
    scaler: torch.amp.GradScaler | None = None
    scheduler: Any = None  # the per-epoch learning-rate schedule
    val_loader: Any = None  # rank 0 only
    names: dict[int, str] = field(default_factory=dict)
    imgsz: int = 640
    stopper: EarlyStopping | None = None
    best_fitness: float = 0.0
    world_size: int = 1  # DDP processes: the loss is scaled by it, as DDP averages gradients over them
    multi_scale_rng: np.random.Generator | None = None  # --multi-scale: draws each batch's size
    is_main: bool = True  # rank 0 (or a single process): shows the progress bar, validates, writes files

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


def train_one_epoch(state: TrainState, hooks: Sequence[Hook] = ()) -> np.ndarray:
    """Train for one epoch on state.loader; return the mean [box, obj, cls] losses. The optimizer steps once per
    `accumulate` batches (nominal batch 64); the EMA follows every step."""
    model, optimizer, device, scaler = state.model, state.optimizer, state.device, state.scaler
    model.train()
    amp = scaler.is_enabled()
    stride = int(state.bare.stride.max())
    mloss = torch.zeros(3, device=device)
    last_step = state.nb * state.epoch - 1  # each epoch starts a fresh accumulation, so a resume replays it exactly
    optimizer.zero_grad()
    t0 = time.perf_counter()
    bar = tqdm(enumerate(state.loader), total=state.nb, disable=not state.is_main,
               bar_format="{l_bar}{bar:10}{r_bar}")
    for i, (imgs, targets, _, _) in bar:
        ni = i + state.nb * state.epoch
        state.ni = ni
        accumulate = state.warmup.step(optimizer, ni, state.epoch)
        imgs = imgs.to(device, non_blocking=True).float() / 255
        targets = targets.to(device)
        if state.multi_scale_rng is not None:
            imgs = multi_scale(imgs, state.imgsz, stride, state.multi_scale_rng)
        with torch.autocast(device_type=device.type, enabled=amp):
            preds = model(imgs)
            loss, loss_items = state.compute_loss(preds, targets)
            for h in hooks:
                extra = h.loss(state, imgs, preds, targets)
                if extra is not None:
                    loss = loss + extra
        if not amp and not torch.isfinite(loss):  # under AMP the scaler skips steps with inf/NaN gradients
            raise UserError(f"loss is {loss.item()} at epoch {state.epoch}, batch {i}: training diverged "
                            "(try a lower --hyp lr0, or check the labels)")
        scaler.scale(loss * state.world_size).backward()  # DDP averages gradients over ranks; upstream scales back
        if ni - last_step >= accumulate:
            _optimizer_step(state, hooks)
            last_step = ni
        mloss = (mloss * i + loss_items) / (i + 1)
        if i == COST_PROBE - 1 and device.type == "cpu" and state.is_main and state.epoch == state.start_epoch:
            note = cost_warning((time.perf_counter() - t0) / COST_PROBE, state.nb, state.epochs - state.epoch)
            if note:
                bar.clear()
                LOGGER.warning(note)
                bar.refresh()
        if state.is_main:
            mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if device.type == "cuda" else "cpu"
            bar.set_description(("%11s" * 2 + "%11.4g" * 4) % (f"{state.epoch}/{state.epochs - 1}", mem, *mloss,
                                                               targets.shape[0]) + f"{imgs.shape[-1]:>11}")
    return mloss.cpu().numpy()


def cost_warning(batch_seconds: float, batches: int, epochs: int, limit_hours: float = 1.0) -> str | None:
    """A warning when the run ahead will take over limit_hours at the measured pace (CPU), with the small settings."""
    epoch_s = batch_seconds * batches
    total = epoch_s * epochs
    if total < limit_hours * 3600:
        return None
    each = f"{epoch_s:.0f} s" if epoch_s < 120 else f"{epoch_s / 60:.0f} min"
    return (f"WARNING: CPU training: an epoch takes about {each} here ({batch_seconds:.2g} s per batch, {batches} "
            f"batches), so {epochs} epochs take about {total / 3600:.1f} h. For a first try on a CPU: {SMALL}")


def _optimizer_step(state: TrainState, hooks: Sequence[Hook]) -> None:
    """Unscale and clip the accumulated gradients, let the hooks add theirs, step, and let the EMA follow."""
    optimizer, scaler = state.optimizer, state.scaler
    scaler.unscale_(optimizer)
    # clip the loss gradients only: a hook's term (the L1 step on gamma) keeps its exact size, so the
    # shrink budget train_sparse.py prints holds (a clipped x100 gamma lr once shrank gammas 7x slower)
    nn.utils.clip_grad_norm_(state.model.parameters(), max_norm=MAX_GRAD_NORM)
    for h in hooks:
        h.after_backward(state)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    for h in hooks:
        h.after_step(state)
    if state.ema is not None:
        state.ema.update(state.model)


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



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(state: TrainState, hooks: Sequence[Hook] = ()) -> dict:
    """Train from state.epoch to state.epochs; return the final results.json record (rank 0; {} on other ranks)."""
    for h in hooks:
        h.on_train_start(state)
    if state.is_main:
        model_info(state.bare, state.imgsz)
        LOGGER.info(f"Image sizes {state.imgsz} train, {state.imgsz} val; {state.loader.num_workers} dataloader "
                    f"workers\nLogging results to {colorstr('bold', str(state.save_dir))}\n"
                    f"Starting training for {state.epochs} epochs...")
    start, stop, t0 = state.epoch, False, time.time()
    state.start_epoch = start
    for epoch in range(start, state.epochs):
        state.epoch = epoch
        _start_epoch(state)
        if state.is_main:
            LOGGER.info("\n" + BAR_HEADER)
        mloss = train_one_epoch(state, hooks)
        lr = [g["lr"] for g in state.optimizer.param_groups]
        state.scheduler.step()
        for h in hooks:
            h.on_epoch_end(state)
        if state.is_main:
            stop = _end_epoch(state, hooks, mloss, lr)
        stop = ddp.broadcast(stop)
        if stop:
            break
    if not state.is_main:
        ddp.cleanup()
        return {}
    return _finish(state, hooks, epoch - start + 1, time.time() - t0)


def _start_epoch(state: TrainState) -> None:
    """Seeds derived from (seed, epoch) so that a resumed run draws the same batches as an uninterrupted one."""
    loader, opt, epoch = state.loader, state.opt, state.epoch
    seed = opt.seed + epoch * 1000 + max(ddp.RANK, 0)
    seed_everything(seed)
    loader.generator.manual_seed(seed)  # shuffling and the workers' augmentation seeds
    dataset = loader.dataset
    dataset.rng = np.random.default_rng(seed)  # augmentations drawn in this process (workers=0)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if opt.close_mosaic and epoch >= opt.epochs - opt.close_mosaic and dataset.mosaic:
        dataset.mosaic = False
        LOGGER.info(f"Closing mosaic augmentation for the last {opt.close_mosaic} epochs")


def _end_epoch(state: TrainState, hooks: Sequence[Hook], mloss: np.ndarray, lr: list[float]) -> bool:
    """Validate the EMA model, log results.csv, write last.pt (and best.pt) atomically; return whether to stop."""
    epoch, ema, opt = state.epoch, state.ema, state.opt
    ema.update_attr(state.model)
    final = epoch + 1 == opt.epochs
    res = None
    if not opt.noval or final:
        res = evaluate(ema.ema, state.val_loader, state.names, half=state.device.type == "cuda",
                       single_cls=opt.single_cls, compute_loss=state.compute_loss)
        print_results(res, state.names)
    metrics = (res.mp, res.mr, res.map50, res.map) if res else (0.0,) * 4
    vloss = res.loss.cpu().tolist() if res is not None and res.loss is not None else [0.0] * 3
    fi = fitness(np.array(metrics).reshape(1, -1))[0]
    stop = state.stopper(epoch, fi)
    state.best_fitness = max(state.best_fitness, fi)
    row = {"epoch": epoch, **dict(zip(RESULT_KEYS, [*mloss, *metrics, *vloss, *lr]))}
    for h in hooks:
        row.update(h.epoch_columns(state))
    write_results_row(state.save_dir / "results.csv", row)
    if not opt.nosave or final:
        _save_checkpoints(state, best=state.best_fitness == fi)
    return stop


def _save_checkpoints(state: TrainState, best: bool) -> None:
    """last.pt, and best.pt when this epoch is the best so far, and epoch<N>.pt every --save-period epochs."""
    ck = training_checkpoint(state.bare, state.ema, state.optimizer, state.epoch, state.best_fitness,
                             vars(state.opt))
    w = state.save_dir / "weights"
    save_checkpoint(ck, w / "last.pt")
    if best:
        save_checkpoint(ck, w / "best.pt")
    if state.opt.save_period > 0 and state.epoch % state.opt.save_period == 0:
        save_checkpoint(ck, w / f"epoch{state.epoch}.pt")


def _finish(state: TrainState, hooks: Sequence[Hook], epochs_done: int, seconds: float) -> dict:
    """Strip the final checkpoints, evaluate the best one, write results.json; return its record."""
    save_dir, opt, names = state.save_dir, state.opt, state.names
    LOGGER.info(f"\n{epochs_done} epochs completed in {seconds / 3600:.3f} hours.")
    w = save_dir / "weights"
    for f in (w / "last.pt", w / "best.pt"):
        if f.exists():
            strip_optimizer(f)
    best = w / "best.pt" if (w / "best.pt").exists() else w / "last.pt"
    LOGGER.info(f"\nValidating {best}...")
    model = load_model(best, state.device)
    info = model_info(model, state.imgsz, verbose=False)
    model.fuse()
    res = evaluate(model, state.val_loader, names, single_cls=opt.single_cls, save_dir=save_dir, plots=opt.plots)
    print_results(res, names, verbose=True)
    if opt.plots:
        plot_results(save_dir / "results.csv")
    for h in hooks:
        h.on_train_end(state)
    record = {"weights": str(best), "last": str(w / "last.pt"), "epochs": epochs_done, "hours": seconds / 3600,
              "P": res.mp, "R": res.mr, "mAP50": res.map50, "mAP50-95": res.map, "params": info["params"],
              "GFLOPs": round(info["GFLOPs"], 3), "imgsz": state.imgsz}
    atomic_write(save_dir / "results.json", lambda f: json.dump(record, f, indent=2), mode="w")
    LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}")
    return record
