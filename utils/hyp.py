"""Hyperparameter files (data/hyps/*.yaml): the keys training needs, and the loss gains scaled to the model."""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError
from utils.files import yaml_load

HYP_KEYS = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr", "box",
            "cls", "cls_pw", "obj", "obj_pw", "anchor_t", "fl_gamma")  # augmentation keys default to scratch-low's


def load_hyp(hyp: str | Path | dict) -> dict:
    """A --hyp file (or the values a resumed checkpoint carries) with every key of HYP_KEYS numeric."""
    d = hyp if isinstance(hyp, dict) else yaml_load(hyp)
    missing = [k for k in HYP_KEYS if not isinstance(d.get(k), (int, float))]
    if missing:
        raise UserError(f"--hyp {hyp if not isinstance(hyp, dict) else ''}: missing or non-numeric "
                        f"keys {', '.join(missing)} (see data/hyps/hyp.scratch-low.yaml)")
    return d


def scale_hyp(hyp: dict, nl: int, nc: int, imgsz: int, label_smoothing: float) -> dict:
    """Loss gains in hyp files are for 3 layers, 80 classes, 640 px; rescale them as upstream does."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = label_smoothing
    return hyp
