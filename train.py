"""Train a YOLOv5 detector with YOLOv5's recipe; the one training loop that train_sparse.py and finetune.py extend.

    python train.py                                                       # yolov5s from scratch on data/synthetic.yaml
    python train.py --cfg yolov5n.yaml --weights '' --imgsz 320 --epochs 30
    python train.py --weights yolov5n.pt --data coco128.yaml --epochs 10  # from a checkpoint on disk
    python train.py --resume                                              # continue the newest interrupted run
    torchrun --nproc_per_node 2 train.py --data data/synthetic.yaml --device cpu  # DDP

Writes runs/train/exp/{weights/last.pt, weights/best.pt, results.csv, results.png, results.json, opt.yaml, hyp.yaml}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from models.yolo import DetectionModel, find_model_yaml
from utils import distributed as ddp
from utils.autoanchor import check_anchors
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from utils.data import check_dataset
from utils.dataloaders import create_dataloader
from utils.ema import ModelEMA
from utils.engine import BAR_HEADER, EarlyStopping, Hook, TrainState, train_one_epoch
from utils.errors import UserError, cli
from utils.files import atomic_write, increment_path, yaml_load, yaml_save
from utils.log import LOGGER, colorstr
from utils.loss import ComputeLoss
from utils.metrics import fitness
from utils.optim import Warmup, build_optimizer, lr_lambda
from utils.plots import plot_labels, plot_results
from utils.torch_utils import de_parallel, model_info, select_device
from val import evaluate, print_results

ROOT = Path(__file__).resolve().parent
NBS = 64  # nominal batch size (hyp key `nbs` overrides): gradients are accumulated up to it, weight decay scaled to it
HYP_KEYS = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr", "box",
            "cls", "cls_pw", "obj", "obj_pw", "anchor_t", "fl_gamma")  # augmentation keys default to scratch-low's
HookSpec = Union[Sequence[Hook], Callable[[argparse.Namespace], Sequence[Hook]]]
RESULT_KEYS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
               "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
               "x/lr0", "x/lr1", "x/lr2")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def latest_run(pattern: str = "last.pt", root: Path = ROOT / "runs") -> Path:
    """The newest runs/*/*/weights/<pattern> by modification time."""
    found = sorted(root.glob(f"*/*/weights/{pattern}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no {root}/*/*/weights/{pattern} found (give the checkpoint's path)")
    return found[-1]


def resume_opt(opt: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """The saved command line of the run to resume, pointed at its last.pt."""
    last = latest_run() if opt.resume is True else Path(opt.resume)
    ckpt = load_checkpoint(last)
    if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0 or not isinstance(ckpt.get("opt"), dict):
        raise UserError(f"{last}: this run finished (or was not written by train.py): nothing to resume")
    saved = argparse.Namespace(**ckpt["opt"])
    saved.weights, saved.resume, saved.cfg = str(last), True, ""
    saved.device, saved.workers = opt.device or saved.device, opt.workers
    LOGGER.info(f"Resuming training from {last} after epoch {ckpt['epoch']}")
    return saved, ckpt


def check_opt(opt: argparse.Namespace) -> None:
    """Flag errors a user can make, each as one line."""
    if opt.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {opt.epochs}")
    if opt.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {opt.batch_size} (no AutoBatch here)")
    if opt.batch_size % ddp.WORLD_SIZE:
        raise UserError(f"--batch-size {opt.batch_size} must be a multiple of the {ddp.WORLD_SIZE} DDP processes")
    if opt.imgsz < 32:
        raise UserError(f"--imgsz must be at least 32, got {opt.imgsz}")
    if opt.weights and not Path(opt.weights).is_file():
        raise UserError(f"--weights {opt.weights} not found (no download is attempted; give a path to a .pt file, "
                        "or --weights '' --cfg yolov5s.yaml to train from scratch)")


def build_model(opt, nc: int, hyp: dict, device: torch.device,
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


def scale_hyp(hyp: dict, nl: int, nc: int, imgsz: int, label_smoothing: float) -> dict:
    """Loss gains in hyp files are for 3 layers, 80 classes, 640 px; rescale them as upstream does."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = label_smoothing
    return hyp


def freeze_layers(model: nn.Module, freeze: list[int]) -> None:
    """--freeze 10: layers 0-9 (the backbone); --freeze 0 1 2: those layers."""
    idx = freeze if len(freeze) > 1 else range(freeze[0])
    prefixes = tuple(f"model.{x}." for x in idx)
    for k, p in model.named_parameters():
        p.requires_grad = not k.startswith(prefixes)
    if prefixes:
        LOGGER.info(f"Freezing layers {list(idx)}")


def make_loaders(opt, data: dict, hyp: dict, gs: int, imgsz: int, nc: int, workers: int):
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
    return train_loader, dataset, val_loader


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


def save_dir_for(opt) -> Path:
    if opt.resume:
        return Path(opt.weights).parent.parent
    return increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=ddp.is_main_process())


def write_results_row(csv: Path, row: dict) -> None:
    """Append one epoch to results.csv (upstream's padded columns), writing the header first if needed."""
    header = "" if csv.exists() else ",".join(f"{k:>20}" for k in row) + "\n"
    line = ",".join(f"{v:>20.5g}" if k != "epoch" else f"{v:>20}" for k, v in row.items()) + "\n"
    with open(csv, "a") as f:
        f.write(header + line)


def trim_results(csv: Path, last_epoch: int) -> None:
    """Drop rows after the checkpoint's epoch: a run killed between its results row and its last.pt would
    otherwise log that epoch twice when resumed."""
    if not csv.exists():
        return
    lines = csv.read_text().splitlines(keepends=True)
    keep = lines[:1] + [x for x in lines[1:] if x.strip() and int(float(x.split(",")[0])) <= last_epoch]
    if len(keep) < len(lines):
        atomic_write(csv, lambda f: f.writelines(keep), mode="w")


def checkpoint(state: TrainState, best_fitness: float, opt) -> dict:
    return {"epoch": state.epoch, "best_fitness": best_fitness, "model": deepcopy(state.bare).half(),
            "ema": deepcopy(state.ema.ema).half(), "updates": state.ema.updates,
            "optimizer": state.optimizer.state_dict(), "opt": vars(opt), "date": datetime.now().isoformat()}


def strip_optimizer(path: Path) -> None:
    """Finished runs keep only the EMA model (as `model`), like upstream: a third of the size, nothing to resume."""
    ckpt = load_checkpoint(path)
    ckpt["model"] = ckpt.get("ema") or ckpt["model"]
    ckpt.update(ema=None, updates=None, optimizer=None, best_fitness=None, epoch=-1)
    ckpt["model"].half().requires_grad_(False)
    save_checkpoint(ckpt, path)


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
    hyp = opt.hyp if isinstance(opt.hyp, dict) else yaml_load(opt.hyp)
    missing = [k for k in HYP_KEYS if not isinstance(hyp.get(k), (int, float))]
    if missing:
        raise UserError(f"--hyp {opt.hyp if not isinstance(opt.hyp, dict) else ''}: missing or non-numeric "
                        f"keys {', '.join(missing)} (see data/hyps/hyp.scratch-low.yaml)")
    with ddp.rank_zero_first():
        data = check_dataset(opt.data, splits=("train", "val"))
    names = {0: "item"} if opt.single_cls else data["names"]
    nc = len(names)
    # the model first: a bad --weights or --cfg stops the run before it leaves a run folder behind
    model, ckpt = build_model(opt, nc, hyp, device, ckpt)
    save_dir = save_dir_for(opt)
    if ddp.is_main_process():
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
        if opt.resume:
            trim_results(save_dir / "results.csv", ckpt["epoch"])
        yaml_save(save_dir / "hyp.yaml", hyp)
        yaml_save(save_dir / "opt.yaml", {**vars(opt), "hyp": None})
    opt.hyp = hyp  # the checkpoint carries the values, so --resume needs no file
    freeze_layers(model, opt.freeze)
    gs = max(int(model.stride.max()), 32)
    imgsz = int(np.ceil(opt.imgsz / gs) * gs)
    if imgsz != opt.imgsz:
        LOGGER.warning(f"WARNING: --imgsz {opt.imgsz} must be a multiple of max stride {gs}, updating to {imgsz}")
    model.nc, model.names = nc, names
    model.hyp = scale_hyp(hyp, model.model[-1].nl, nc, imgsz, opt.label_smoothing)
    workers = cpu_workers(device, opt.workers)
    train_loader, dataset, val_loader = make_loaders(opt, data, hyp, gs, imgsz, nc, workers)
    if ddp.is_main_process() and not opt.resume:
        if opt.plots:
            plot_labels(np.concatenate(dataset.labels, 0), names, save_dir)
        # from scratch the anchors are checked against the data; from weights the checkpoint's are kept unless asked
        if (opt.autoanchor or not opt.weights) and not opt.noautoanchor:
            check_anchors(dataset, model, thr=hyp["anchor_t"], imgsz=imgsz)
    return _fit(opt, hooks, model, ckpt, device, save_dir, names, train_loader, val_loader, imgsz)


def _fit(opt, hooks, model, ckpt, device, save_dir, names, train_loader, val_loader, imgsz) -> dict:
    main = ddp.is_main_process()
    nbs = opt.hyp.get("nbs", NBS)
    accumulate = max(round(nbs / opt.batch_size), 1)
    decay = opt.hyp["weight_decay"] * opt.batch_size * accumulate / nbs
    optimizer = build_optimizer(model, opt.optimizer, opt.hyp["lr0"], opt.hyp["momentum"], decay)
    lf = lr_lambda(opt.hyp["lrf"], opt.epochs, opt.cos_lr)
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
    del ckpt
    if device.type == "cuda" and ddp.LOCAL_RANK != -1 and opt.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    elif opt.sync_bn and main:
        LOGGER.warning("WARNING: --sync-bn needs CUDA DDP; ignored")
    if ddp.LOCAL_RANK != -1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ddp.LOCAL_RANK] if device.type == "cuda"
                                                    else None)
    nb = len(train_loader)
    nw = max(round(opt.hyp["warmup_epochs"] * nb), 100) if opt.hyp["warmup_epochs"] > 0 else -1  # iterations
    warmup = Warmup(nw, opt.hyp, accumulate, lf)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    compute_loss = ComputeLoss(model)
    state = TrainState(model, optimizer, ema, opt.hyp, opt.epochs, nb, save_dir, device, start_epoch, opt=opt,
                       warmup=warmup, loader=train_loader)
    for h in hooks:
        h.on_train_start(state)
    stopper, stop = EarlyStopping(opt.patience), False
    rng = np.random.default_rng(opt.seed) if opt.multi_scale else None
    if main:
        model_info(de_parallel(model), imgsz)
        LOGGER.info(f"Image sizes {imgsz} train, {imgsz} val; {train_loader.num_workers} dataloader workers\n"
                    f"Logging results to {colorstr('bold', str(save_dir))}\n"
                    f"Starting training for {opt.epochs} epochs...")
    t0 = time.time()
    for epoch in range(start_epoch, opt.epochs):
        state.epoch = epoch
        _start_epoch(train_loader, opt, epoch)
        if main:
            LOGGER.info("\n" + BAR_HEADER)
        mloss = train_one_epoch(state, train_loader, compute_loss, warmup, scaler, hooks, ddp.WORLD_SIZE, rng,
                                imgsz, show_bar=main)
        lr = [g["lr"] for g in optimizer.param_groups]
        scheduler.step()
        for h in hooks:
            h.on_epoch_end(state)
        if main:
            best_fitness, stop = _end_epoch(state, opt, hooks, val_loader, names, compute_loss, mloss, lr,
                                            best_fitness, stopper)
        stop = ddp.broadcast(stop)
        if stop:
            break
    if not main:
        ddp.cleanup()
        return {}
    return _finish(state, opt, hooks, val_loader, names, epoch - start_epoch + 1, time.time() - t0, imgsz)


def _start_epoch(loader, opt, epoch: int) -> None:
    """Seeds derived from (seed, epoch) so that a resumed run draws the same batches as an uninterrupted one."""
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


def _end_epoch(state, opt, hooks, val_loader, names, compute_loss, mloss, lr, best_fitness, stopper):
    """Validate the EMA model, log results.csv, write last.pt (and best.pt) atomically; return (best, stop)."""
    epoch, ema = state.epoch, state.ema
    ema.update_attr(state.model)
    final = epoch + 1 == opt.epochs
    res = None
    if not opt.noval or final:
        res = evaluate(ema.ema, val_loader, names, half=state.device.type == "cuda", single_cls=opt.single_cls,
                       compute_loss=compute_loss)
        print_results(res, names)
    metrics = (res.mp, res.mr, res.map50, res.map) if res else (0.0,) * 4
    vloss = res.loss.cpu().tolist() if res is not None and res.loss is not None else [0.0] * 3
    fi = fitness(np.array(metrics).reshape(1, -1))[0]
    stop = stopper(epoch, fi)
    best_fitness = max(best_fitness, fi)
    row = {"epoch": epoch, **dict(zip(RESULT_KEYS, [*mloss, *metrics, *vloss, *lr]))}
    for h in hooks:
        row.update(h.epoch_columns(state))
    write_results_row(state.save_dir / "results.csv", row)
    if not opt.nosave or final:
        ck = checkpoint(state, best_fitness, opt)
        w = state.save_dir / "weights"
        save_checkpoint(ck, w / "last.pt")
        if best_fitness == fi:
            save_checkpoint(ck, w / "best.pt")
        if opt.save_period > 0 and epoch % opt.save_period == 0:
            save_checkpoint(ck, w / f"epoch{epoch}.pt")
    return best_fitness, stop


def _finish(state, opt, hooks, val_loader, names, epochs_done: int, seconds: float, imgsz: int) -> dict:
    save_dir = state.save_dir
    LOGGER.info(f"\n{epochs_done} epochs completed in {seconds / 3600:.3f} hours.")
    w = save_dir / "weights"
    for f in (w / "last.pt", w / "best.pt"):
        if f.exists():
            strip_optimizer(f)
    best = w / "best.pt" if (w / "best.pt").exists() else w / "last.pt"
    LOGGER.info(f"\nValidating {best}...")
    model = load_model(best, state.device)
    info = model_info(model, imgsz, verbose=False)
    model.fuse()
    res = evaluate(model, val_loader, names, single_cls=opt.single_cls, save_dir=save_dir, plots=opt.plots)
    print_results(res, names, verbose=True)
    if opt.plots:
        plot_results(save_dir / "results.csv")
    for h in hooks:
        h.on_train_end(state)
    record = {"weights": str(best), "last": str(w / "last.pt"), "epochs": epochs_done, "hours": seconds / 3600,
              "P": res.mp, "R": res.mr, "mAP50": res.map50, "mAP50-95": res.map, "params": info["params"],
              "GFLOPs": round(info["GFLOPs"], 3), "imgsz": imgsz}
    atomic_write(save_dir / "results.json", lambda f: json.dump(record, f, indent=2), mode="w")
    LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}")
    return record


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """train.py's flags (upstream's); scripts that extend training add theirs to this parser."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' with --cfg: from scratch)")
    p.add_argument("--cfg", type=str, default="", help="model yaml (default yolov5s.yaml when no --weights)")
    p.add_argument("--data", type=str, default=str(ROOT / "data/synthetic.yaml"), help="dataset yaml")
    p.add_argument("--hyp", type=str, default=str(ROOT / "data/hyps/hyp.scratch-low.yaml"), help="hyperparameters")
    p.add_argument("--epochs", type=int, default=100, help="total training epochs")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all GPUs")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor when training from scratch")
    p.add_argument("--autoanchor", action="store_true", help="run AutoAnchor even when starting from --weights")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--cache", type=str, nargs="?", const="ram", choices=("ram", "disk"), help="image cache")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default="SGD", help="optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in CUDA DDP mode")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per RANK in DDP mode)")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--close-mosaic", type=int, default=0, help="turn mosaic off for the last N epochs")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def finalize_opt(opt: argparse.Namespace) -> argparse.Namespace:
    opt.plots = not opt.noplots
    if opt.cfg:
        opt.cfg = str(find_model_yaml(opt.cfg))
    return opt


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    return finalize_opt(build_parser().parse_args(argv))


def run(opt: argparse.Namespace, hooks: HookSpec = ()) -> dict:
    try:
        return train(opt, hooks)
    finally:
        ddp.cleanup()


@cli
def main(argv: list[str] | None = None) -> dict:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
