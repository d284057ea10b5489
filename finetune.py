"""Fine-tune a trained or pruned model: train.py on the checkpoint's own architecture with a gentler recipe.

    python finetune.py --weights runs/prune/exp/pruned.pt --data data/synthetic.yaml --epochs 20
    python finetune.py --weights pruned.pt --hyp data/hyps/hyp.scratch-low.yaml   # any train.py flag works
    python finetune.py --weights pruned.pt --teacher runs/train-sparse/exp/weights/last.pt --kd 1.0  # distillation

The model is rebuilt from the yaml stored in the checkpoint (a pruned model's own widths), so there is no --cfg;
its anchors are kept (pass --autoanchor to recompute them). With --bn-floor 0.05, conv channels whose BN running
variance is below 0.05 are first rescaled to it without changing the outputs (utils/hooks/bn_floor.py): a
sparse-trained model has many, and they make the first fine-tuning epochs lose much of what the model knew. A pruned
checkpoint's BN statistics lag behind its new widths, so by default its EMA model's statistics are recomputed on 8
training batches after every epoch, before validation (--bn-recal N; 0 turns it off). With --teacher, the unpruned
model's outputs are soft targets (utils/hooks/distill.py) and results.csv gains train/kd_loss. A checkpoint from
`prune.py --method unstructured` keeps its zero weights: they are re-applied after every optimizer step.
Outputs go to runs/finetune/exp.
"""

from __future__ import annotations

import argparse

from utils import trainer
from utils.checkpoint import load_checkpoint
from utils.data import ROOT
from utils.engine import Hook
from utils.errors import UserError, cli
from utils.hooks import BNRecalibration, BNVarianceFloor, Distillation, KeepZeros, hooks_from_opt
from utils.hooks.distill import add_teacher_args
from utils.log import LOGGER
from utils.train_options import build_parser, finalize_opt


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser(__doc__)
    add_teacher_args(p, "the unpruned model")
    p.add_argument("--bn-floor", type=float, default=0.0,
                   help="before the first step, rescale conv channels whose BN running variance is below this (0.05 "
                        "suits sparse-trained models) to it, keeping the outputs; 0 (default) leaves them")
    p.add_argument("--bn-recal", type=int, default=None,
                   help="recompute the EMA model's BN statistics on this many training batches after every epoch, "
                        "before validation (default: 8 for a pruned checkpoint, whose statistics lag, else 0)")
    p.set_defaults(project=str(ROOT / "runs/finetune"), hyp=str(ROOT / "data/hyps/hyp.finetune.yaml"))
    opt = finalize_opt(p.parse_args(argv))
    if not opt.resume and not opt.weights:
        raise UserError("finetune.py needs --weights (the trained or pruned checkpoint to fine-tune)")
    if opt.bn_floor < 0 or (opt.bn_recal or 0) < 0:
        raise UserError("--bn-floor and --bn-recal must be >= 0 (0 turns them off)")
    if opt.cfg:
        raise UserError("finetune.py builds the model from the checkpoint's own yaml: drop --cfg "
                        "(train.py --cfg ... --weights ... transfers weights into another architecture)")
    if not opt.resume:  # a resumed run keeps the choices it saved
        pruned = load_checkpoint(opt.weights).get("prune")
        opt.keep_zeros = (pruned or {}).get("method") == "unstructured"
        if opt.bn_recal is None:
            opt.bn_recal = 8 if pruned else 0
    return opt


def hooks(opt: argparse.Namespace) -> list[Hook]:
    """--teacher's distillation, --bn-floor and an unstructured checkpoint's zeros, from the resolved options (a
    resumed run's saved ones)."""
    if getattr(opt, "keep_zeros", False):
        LOGGER.info("finetune: the checkpoint was pruned unstructured; its zero weights stay zero")
    return hooks_from_opt(opt, Distillation, BNVarianceFloor, BNRecalibration, KeepZeros)


def run(opt: argparse.Namespace) -> dict:
    return trainer.run(opt, hooks)


@cli
def main(argv: list[str] | None = None) -> dict:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
