"""train.py's command line (upstream's flags), shared by the scripts that extend training: train_sparse.py and
finetune.py add their own flags to this parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.yolo import find_model_yaml
from utils import distributed as ddp
from utils.data import ROOT
from utils.errors import UserError


def build_parser(description: str) -> argparse.ArgumentParser:
    """train.py's flags; `description` is the calling script's help text."""
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
    """Derived options: plots on unless --noplots, --cfg resolved to a model yaml's path."""
    opt.plots = not opt.noplots
    if opt.cfg:
        opt.cfg = str(find_model_yaml(opt.cfg))
    return opt


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
