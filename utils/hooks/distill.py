"""Knowledge distillation from an unpruned teacher to a pruned student with the same heads and anchors.

Soft targets, per detection level and anchor cell:
- objectness: BCE of the student's logit against the teacher's probability, everywhere;
- classes: BCE against the teacher's class probabilities, weighted by the teacher's objectness (where it sees objects);
- boxes: squared difference of the sigmoid box outputs where the teacher is confident (objectness > conf).
Every term is zero, with zero gradient, when the student outputs what the teacher does. Each term carries the
detection loss's gain for its kind (hyp box, obj, cls as scaled for the model), so that --kd 1.0 weighs the soft
targets as the labels are weighed: unweighted, the box term alone had ~5x the gradient norm of the whole detection
loss on coco128 and fine-tuning with a teacher diverged.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.checkpoint import load_model
from utils.engine import Hook, TrainState
from utils.errors import UserError
from utils.log import LOGGER, colorstr


def distill_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], conf: float = 0.5,
                 gains: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Sum over levels of the mean soft-target losses, weighted by gains (box, obj, cls); tensors are
    (bs, na, ny, nx, 5 + nc) raw head outputs."""
    gbox, gobj, gcls = gains
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        t = t.detach().float()
        s = s.float()
        t_obj = t[..., 4].sigmoid()
        lobj = F.binary_cross_entropy_with_logits(s[..., 4], t_obj, reduction="none")
        lobj = (lobj - F.binary_cross_entropy_with_logits(t[..., 4], t_obj, reduction="none")).mean()  # 0 at s == t
        lcls = s.new_zeros(())
        if s.shape[-1] > 6:  # one class is described by objectness alone
            t_cls = t[..., 5:].sigmoid()
            ce = F.binary_cross_entropy_with_logits(s[..., 5:], t_cls, reduction="none")
            ce = ce - F.binary_cross_entropy_with_logits(t[..., 5:], t_cls, reduction="none")
            lcls = (ce.mean(-1) * t_obj).sum() / t_obj.sum().clamp(min=1e-6)
        sure = t_obj > conf
        lbox = ((s[..., :4].sigmoid() - t[..., :4].sigmoid()) ** 2)[sure].sum(-1).mean() if sure.any() else 0.0
        total = total + gobj * lobj + gcls * lcls + gbox * lbox
    return total


class Distillation(Hook):
    """finetune.py --teacher: adds kd * distill_loss * batch size (the detection loss's scale) to every batch."""

    def __init__(self, teacher: nn.Module, kd: float = 1.0, conf: float = 0.5):
        self.teacher, self.kd, self.conf = teacher, kd, conf
        self.gains = (1.0, 1.0, 1.0)
        self.sum, self.n = 0.0, 0

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> Distillation | None:
        """--teacher and --kd (add_teacher_args); None when no teacher is named."""
        return cls(load_model(opt.teacher), opt.kd) if getattr(opt, "teacher", "") else None

    def on_train_start(self, state: TrainState) -> None:
        s, t = state.bare.model[-1], self.teacher.model[-1]
        if (s.nc, s.na, s.nl) != (t.nc, t.na, t.nl) or not torch.allclose(s.anchors.cpu(), t.anchors.float().cpu()):
            raise UserError("--teacher must have the student's classes, anchors and detection levels "
                            f"(teacher nc={t.nc}, student nc={s.nc})")
        self.teacher = self.teacher.float().to(state.device).eval().requires_grad_(False)
        hyp = state.bare.hyp  # the detection loss's gains, as scaled for this model's levels, classes and size
        self.gains = (hyp["box"], hyp["obj"], hyp["cls"])
        LOGGER.info(f"{colorstr('distillation: ')}kd {self.kd} from a teacher of "
                    f"{sum(p.numel() for p in self.teacher.parameters()):,} parameters; terms weighted as the "
                    f"detection loss's (box {self.gains[0]:.3g}, obj {self.gains[1]:.3g}, cls {self.gains[2]:.3g})")

    def loss(self, state: TrainState, imgs, preds, targets) -> torch.Tensor:
        with torch.no_grad():
            t_out = self.teacher(imgs)[1]  # eval mode: (decoded, raw per-level outputs)
        kd = distill_loss(preds, t_out, self.conf, self.gains)
        self.sum, self.n = self.sum + float(kd.detach()), self.n + 1
        return self.kd * kd * imgs.shape[0]

    def epoch_columns(self, state: TrainState) -> dict[str, float]:
        mean, self.sum, self.n = self.sum / max(self.n, 1), 0.0, 0
        return {"train/kd_loss": mean}


def add_teacher_args(p: argparse.ArgumentParser, what: str) -> None:
    """--teacher and --kd, the same in every script that distils (finetune.py, train_sparse.py)."""
    p.add_argument("--teacher", type=str, default="", help=f"checkpoint to distil from ({what})")
    p.add_argument("--kd", type=float, default=1.0, help="weight of the distillation loss")

