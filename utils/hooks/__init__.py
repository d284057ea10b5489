"""Training hooks: behaviour that scripts add to utils/engine.py's loop, each built from the command line by
`from_opt(opt)` (None when the options leave it off).

    BNSparsity        train_sparse.py: L1 (or polarization) penalty on the BN weights of prunable channels
    Distillation      --teacher: the unpruned model's outputs as soft targets
    BNVarianceFloor   finetune.py --bn-floor: lift tiny BN variances before the first step
    BNRecalibration   --bn-recal: recompute the EMA model's BN statistics after every epoch
    KeepZeros         finetune.py on an unstructured-pruned checkpoint: its zero weights stay zero
"""

from __future__ import annotations

import argparse

from utils.engine import Hook
from utils.hooks.bn_floor import BNVarianceFloor
from utils.hooks.bn_recal import BNRecalibration
from utils.hooks.distill import Distillation
from utils.hooks.keep_zeros import KeepZeros
from utils.hooks.sparsity import BNSparsity

__all__ = ["BNRecalibration", "BNSparsity", "BNVarianceFloor", "Distillation", "KeepZeros", "hooks_from_opt"]


def hooks_from_opt(opt: argparse.Namespace, *kinds: type) -> list[Hook]:
    """The hooks of `kinds`, in that order, that the (resolved) options ask for."""
    return [h for h in (k.from_opt(opt) for k in kinds) if h is not None]
