"""A whole training run as train.py's command line describes it: resume, data, model, optimizer, then utils/engine.py's
loop. train.py, train_sparse.py and finetune.py call `run(opt, hooks)`; only their hooks differ.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils import distributed as ddp
from utils.autoanchor import check_anchors
from utils.checkpoint import load_checkpoint
from utils.data import ROOT, check_dataset
from utils.dataloaders import create_dataloader
from utils.ema import ModelEMA
from utils.engine import EarlyStopping, Hook, TrainState, fit, seed_everything
from utils.errors import UserError
from utils.files import increment_path, newest_run_file, yaml_save
from utils.hyp import load_hyp, scale_hyp
from utils.log import LOGGER, colorstr
from utils.loss import ComputeLoss
from utils.optim import Warmup, build_optimizer, lr_lambda
from utils.plots import plot_labels
from utils.results import trim_results
from utils.torch_utils import select_device
from utils.train_options import check_opt

NBS = 64  # nominal batch size (hyp key `nbs` overrides): gradients are accumulated up to it, weight decay scaled to it
HookSpec = Union[Sequence[Hook], Callable[[argparse.Namespace], Sequence[Hook]]]


def run(opt: argparse.Namespace, hooks: HookSpec = ()) -> dict:
    """`train`, leaving no DDP process group behind, whatever happens."""
    try:
        return train(opt, hooks)
    finally:
        ddp.cleanup()


def train(opt: argparse.Namespace, hooks: HookSpec = ()) -> dict:
    """Run a whole training as the command line describes; return the final results.json record (rank 0).

    hooks: a list, or a callable making the list from the resolved command line (a resumed run's saved options),
    so that scripts which extend training rebuild their hooks from the run they continue."""
    ckpt = None
    if opt.resume:
        opt, ckpt = resume_opt(opt)
    if callable(hooks):
        hooks = hooks(opt)
    if not opt.weights and not opt.cfg:
        opt.cfg = "yolov5s.yaml"
        LOGGER.info("No --weights or --cfg given: training yolov5s from scratch")
    check_opt(opt)
    device = select_device(opt.device)
    ddp.init_distributed(device)
    seed_everything(opt.seed + 1 + max(ddp.RANK, 0))
    hyp = load_hyp(opt.hyp)
    with ddp.rank_zero_first():
        data = check_dataset(opt.data, splits=("train", "val"))
    names = {0: "item"} if opt.single_cls else data["names"]
    # the model first: a bad --weights or --cfg stops the run before it leaves a run folder behind
    model, ckpt = build_model(opt, len(names), hyp, device, ckpt)
    save_dir = make_save_dir(opt, hyp, ckpt)
    opt.hyp = hyp  # the checkpoint carries the values, so --resume needs no file
    imgsz = prepare_model(model, opt, names)
    loaders = make_loaders(opt, data, model, imgsz, device, save_dir)
    state = build_state(opt, model, ckpt, device, save_dir, loaders)
    del ckpt
    state.names, state.imgsz = names, imgsz
    return fit(state, hooks)


def resume_opt(opt: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """The saved command line of the run to resume, pointed at its last.pt."""
    last = newest_run_file("last.pt", [ROOT / "runs"]) if opt.resume is True else Path(opt.resume)
    if last is None:
        raise UserError(f"no {ROOT / 'runs'}/*/*/weights/last.pt found (give the checkpoint's path)")
    ckpt = load_checkpoint(last)
    if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0 or not isinstance(ckpt.get("opt"), dict):
        raise UserError(f"{last}: this run finished (or was not written by train.py): nothing to resume")
    saved = argparse.Namespace(**ckpt["opt"])
    saved.weights, saved.resume, saved.cfg = str(last), True, ""
    saved.device, saved.workers = opt.device or saved.device, opt.workers
    LOGGER.info(f"Resuming training from {last} after epoch {ckpt['epoch']}")
    return saved, ckpt


def build_model(opt: argparse.Namespace, nc: int, hyp: dict, device: torch.device,
                ckpt: dict | None = None) -> tuple[DetectionModel, dict | None]:
    """A model from --cfg (or the checkpoint's own yaml) with every matching tensor of --weights transferred.
    `ckpt` is --weights already loaded (a resume has read it), so the file is not read twice."""
    if opt.weights:
        ckpt = ckpt or load_checkpoint(opt.weights)
        src = (ckpt.get("ema") or ckpt["model"]).float()
        model = DetectionModel(opt.cfg or src.yaml, ch=3, nc=nc, anchors=hyp.get("anchors"))
        # a new yaml or hyp anchors mean the user chose the anchors; otherwise the checkpoint's are kept
        exclude = ["anchor"] if (opt.cfg or hyp.get("anchors")) and not opt.resume else []
        csd = src.state_dict() if not opt.resume else ckpt["model"].float().state_dict()
        msd = model.state_dict()
        keep = {k: v for k, v in csd.items()
                if k in msd and v.shape == msd[k].shape and not any(x in k for x in exclude)}
        model.load_state_dict(keep, strict=False)
        LOGGER.info(f"Transferred {len(keep)}/{len(msd)} items from {opt.weights}")
    else:
        model = DetectionModel(opt.cfg, ch=3, nc=nc, anchors=hyp.get("anchors"))
    return model.to(device), ckpt


def make_save_dir(opt: argparse.Namespace, hyp: dict, ckpt: dict | None) -> Path:
    """runs/train/exp (exp2, ...; a resumed run's own folder, its results.csv cut back to the checkpoint's epoch),
    with hyp.yaml and opt.yaml written on rank 0."""
    if opt.resume:
        save_dir = Path(opt.weights).parent.parent
    else:
        save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=ddp.is_main_process())
    if ddp.is_main_process():
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
        if opt.resume:
            trim_results(save_dir / "results.csv", ckpt["epoch"])
        yaml_save(save_dir / "hyp.yaml", hyp)
        yaml_save(save_dir / "opt.yaml", {**vars(opt), "hyp": None})
    return save_dir


def prepare_model(model: DetectionModel, opt: argparse.Namespace, names: dict[int, str]) -> int:
    """Freeze --freeze layers, give the model its classes and scaled loss gains; return the image size (a multiple
    of the largest stride)."""
    freeze_layers(model, opt.freeze)
    gs = max(int(model.stride.max()), 32)
    imgsz = int(np.ceil(opt.imgsz / gs) * gs)
    if imgsz != opt.imgsz:
        LOGGER.warning(f"WARNING: --imgsz {opt.imgsz} must be a multiple of max stride {gs}, updating to {imgsz}")
    model.nc, model.names = len(names), names
    model.hyp = scale_hyp(opt.hyp, model.model[-1].nl, len(names), imgsz, opt.label_smoothing)
    return imgsz


def freeze_layers(model: nn.Module, freeze: list[int]) -> None:
    """--freeze 10: layers 0-9 (the backbone); --freeze 0 1 2: those layers."""
    idx = freeze if len(freeze) > 1 else range(freeze[0])
    prefixes = tuple(f"model.{x}." for x in idx)
    for k, p in model.named_parameters():
        p.requires_grad = not k.startswith(prefixes)
    if prefixes:
        LOGGER.info(f"Freezing layers {list(idx)}")


def make_loaders(opt: argparse.Namespace, data: dict, model: DetectionModel, imgsz: int, device: torch.device,
                 save_dir: Path) -> tuple:
    """(train loader, val loader; None off rank 0). A new run also plots its labels and, from scratch or when asked,
    checks the anchors against the data."""
    hyp, nc, gs = opt.hyp, model.nc, max(int(model.stride.max()), 32)
    workers = cpu_workers(device, opt.workers)
    bs = opt.batch_size // ddp.WORLD_SIZE
    with ddp.rank_zero_first():
        train_loader, dataset = create_dataloader(
            data["train"], imgsz, bs, gs, hyp=hyp, augment=True, rect=opt.rect, workers=workers,
            nc=None if opt.single_cls else nc, prefix=colorstr("train: "), cache=opt.cache, shuffle=not opt.rect,
            rank=ddp.RANK, seed=opt.seed)
    if opt.single_cls:
        for lb in dataset.labels:
            lb[:, 0] = 0
    val_loader = None
    if ddp.is_main_process():
        val_loader = create_dataloader(data["val"], imgsz, bs * 2, gs, rect=True, pad=0.5, workers=workers,
                                       nc=None if opt.single_cls else nc, prefix=colorstr("val: "),
                                       cache=None if opt.noval else opt.cache)[0]
        if not opt.resume:
            if opt.plots:
                plot_labels(np.concatenate(dataset.labels, 0), model.names, save_dir)
            # from scratch the anchors are checked against the data; from weights the checkpoint's are kept unless asked
            if (opt.autoanchor or not opt.weights) and not opt.noautoanchor:
                check_anchors(dataset, model, thr=hyp["anchor_t"], imgsz=imgsz)
    return train_loader, val_loader


def cpu_workers(device: torch.device, workers: int) -> int:
    """On CPU, loader workers and torch's OpenMP threads share the cores, and OpenMP threads that wait for a busy
    core spin instead of sleeping: 2 threads beside 2 workers on 2 cores trained 8x slower than 2 threads and no
    worker (benchmarks/train_speed.py). So give workers a quarter of the cores and torch the rest."""
    if device.type != "cpu" or ddp.LOCAL_RANK != -1:  # torchrun already sets OMP_NUM_THREADS=1
        return workers
    cores = os.cpu_count() or 1
    nw = min(workers, cores // 4)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores - nw)))
    if nw < workers:
        LOGGER.info(f"CPU training: {nw} dataloader workers, {torch.get_num_threads()} torch threads "
                    f"(of {cores} cores)")
    return nw


def build_state(opt: argparse.Namespace, model: DetectionModel, ckpt: dict | None, device: torch.device,
                save_dir: Path, loaders: tuple) -> TrainState:
    """Optimizer, LR schedule, EMA, warmup and AMP scaler for `model` (restored from `ckpt` when resuming), the model
    wrapped for DDP: what the loop runs on."""
    main, hyp = ddp.is_main_process(), opt.hyp
    nbs = hyp.get("nbs", NBS)
    accumulate = max(round(nbs / opt.batch_size), 1)
    decay = hyp["weight_decay"] * opt.batch_size * accumulate / nbs
    optimizer = build_optimizer(model, opt.optimizer, hyp["lr0"], hyp["momentum"], decay)
    lf = lr_lambda(hyp["lrf"], opt.epochs, opt.cos_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model) if main else None
    start_epoch, best_fitness = 0, 0.0
    if opt.resume:  # after the scheduler's first step, so the saved learning rates are the ones that stay
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.ema.load_state_dict(ckpt["ema"].float().state_dict())
            ema.updates = ckpt["updates"]
        start_epoch, best_fitness = ckpt["epoch"] + 1, ckpt.get("best_fitness") or 0.0
    scheduler.last_epoch = start_epoch - 1
    model = wrap_ddp(model, device, opt.sync_bn)
    train_loader, val_loader = loaders
    nb = len(train_loader)
    nw = max(round(hyp["warmup_epochs"] * nb), 100) if hyp["warmup_epochs"] > 0 else -1  # iterations
    return TrainState(model, optimizer, ema, hyp, opt.epochs, nb, save_dir, device, start_epoch, opt=opt,
                      warmup=Warmup(nw, hyp, accumulate, lf), loader=train_loader, val_loader=val_loader,
                      compute_loss=ComputeLoss(model), scheduler=scheduler, best_fitness=best_fitness,
                      scaler=torch.amp.GradScaler(device.type, enabled=device.type == "cuda"),
                      stopper=EarlyStopping(opt.patience), world_size=ddp.WORLD_SIZE, is_main=main,
                      multi_scale_rng=np.random.default_rng(opt.seed) if opt.multi_scale else None)


def wrap_ddp(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """The model in DistributedDataParallel under torchrun (SyncBatchNorm first with --sync-bn on CUDA)."""
    if device.type == "cuda" and ddp.LOCAL_RANK != -1 and sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    elif sync_bn and ddp.is_main_process():
        LOGGER.warning("WARNING: --sync-bn needs CUDA DDP; ignored")
    if ddp.LOCAL_RANK != -1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ddp.LOCAL_RANK] if device.type == "cuda"
                                                    else None)
    return model
