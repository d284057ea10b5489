"""Sparse training for network slimming: train.py plus an L1 penalty on the BatchNorm weights of prunable channels.

    python train_sparse.py --sr 0.001                                     # defaults as train.py's
    python train_sparse.py --weights runs/train/exp/weights/best.pt --data data/synthetic.yaml --epochs 30 --sr 0.005
    python train_sparse.py --weights best.pt --shrink 0.9                 # sr chosen so gamma can move by 0.9
    python train_sparse.py --weights best.pt --shrink 0.9 --polarize 1.2  # polarization instead of plain L1
    python train_sparse.py --weights best.pt --shrink 0.9 --teacher best.pt  # distil from the dense model meanwhile
    python prune.py --weights last.pt --percent 0.6                       # next step

Adds to runs/train-sparse/exp: results.csv columns sparse/*, bn_gamma.png (the gamma distribution per epoch) and
sparsity.json (sr, budget, gamma statistics, the largest safe prune percent). Starting from --weights, the
checkpoint's anchors are kept (pass --autoanchor to recompute them). With --teacher (finetune.py's distillation),
the dense model's outputs stay soft targets while the penalty takes channels away; results.csv gains train/kd_loss.
"""

from __future__ import annotations

import argparse

from utils import trainer
from utils.data import ROOT
from utils.errors import UserError, cli
from utils.hooks import BNSparsity, Distillation, hooks_from_opt
from utils.hooks.distill import add_teacher_args
from utils.train_options import build_parser, finalize_opt


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser(__doc__)
    p.add_argument("--sr", type=float, default=0.001, help="L1 penalty on BN weights (scale sparsity rate)")
    p.add_argument("--sr-schedule", choices=("constant", "linear"), default="constant",
                   help="linear: sr decays to 10%% of --sr at the last epoch")
    p.add_argument("--shrink", type=float, default=None,
                   help="set sr so that the penalty alone can shrink a gamma by this much over the run")
    p.add_argument("--skip-shortcut", action="store_true", help="leave BNs tied to residual adds unpenalised")
    p.add_argument("--gamma-lr", type=float, default=1.0,
                   help="multiply the learning rate of the penalised gammas (their gradients, loss and penalty "
                        "alike): the same sr, reached sooner; short runs on small data need it")
    p.add_argument("--polarize", type=float, default=0.0, metavar="T",
                   help="polarization regulariser (Zhuang et al. 2020) instead of plain L1: sr * (T|gamma| - "
                        "|gamma - mean gamma|); T 1.2 pulls gammas below the mean 11x harder than those above it")
    p.add_argument("--polarize-scope", choices=("layer", "global"), default="layer",
                   help="the mean gamma of --polarize: per BN layer (every layer splits) or over the network (paper)")
    p.add_argument("--bn-recal", type=int, default=8,
                   help="recompute the EMA model's BN statistics on this many training batches after every epoch "
                        "(0: off); a strong penalty outruns BN's running averages")
    add_teacher_args(p, "the dense model, e.g. the --weights it starts from")
    p.set_defaults(project=str(ROOT / "runs/train-sparse"))
    opt = finalize_opt(p.parse_args(argv))
    if opt.sr < 0 or (opt.shrink is not None and opt.shrink <= 0) or opt.bn_recal < 0 or opt.gamma_lr <= 0 \
            or opt.polarize < 0:
        raise UserError("--sr, --bn-recal and --polarize must be >= 0, --shrink and --gamma-lr > 0")
    return opt


def run(opt: argparse.Namespace) -> dict:
    # built from the resolved options, so a resumed run keeps its own penalty
    return trainer.run(opt, lambda o: hooks_from_opt(o, BNSparsity, Distillation))


@cli
def main(argv: list[str] | None = None) -> dict:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
