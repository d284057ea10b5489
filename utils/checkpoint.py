"""Reading and writing checkpoints in upstream YOLOv5's format.

A checkpoint is a dict with `model` (the pickled DetectionModel, fp16), `ema`, `updates`, `optimizer`, `epoch`,
`best_fitness`, `opt`, `date`. A finished one (the end of training, prune.py's output) keeps only the model, in fp16:
`ema`, `updates`, `optimizer` and `best_fitness` are None and `epoch` is -1. Unpickling runs code from the file: only
load checkpoints you trust (`weights_only=False` is required for pickled models).
"""

from __future__ import annotations

import pickle
import zipfile
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.yolo import Detect, DetectionModel
from utils.errors import UserError
from utils.files import atomic_write
from utils.log import LOGGER
from utils.torch_utils import select_device


# what torch.load raises for a truncated zip, a file that is no zip, or a pickle cut short
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, AttributeError, pickle.UnpicklingError, zipfile.BadZipFile)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load a checkpoint on CPU; a missing, truncated or foreign file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights not found: {path} (no download is attempted; give a path to a .pt file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # pickled modules: trusted files only
    except ModuleNotFoundError as e:
        raise UserError(f"{path}: pickles classes from '{e.name}', which this repo does not provide "
                        "(only YOLOv5 checkpoints are supported)") from None
    except _UNREADABLE as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint, truncated or corrupt? ({msg[:120]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        raise UserError(f"{path}: not a YOLOv5 checkpoint (expected a dict with a pickled 'model')")
    return ckpt


def names_dict(names) -> dict[int, str]:
    """Class names as {index: name}: v6 checkpoints store a list, v7 ones a dict."""
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return dict(enumerate(str(n) for n in names))


def _make_compatible(model: DetectionModel) -> DetectionModel:
    """Attributes that older pickles lack or store differently."""
    for m in model.modules():
        if isinstance(m, Detect):
            m.grid = [torch.empty(0) for _ in range(m.nl)]
            m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
            m.inplace = getattr(m, "inplace", True)
        elif isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None  # absent from pickles made with torch < 1.11
    if not hasattr(model, "names"):
        model.names = {i: str(i) for i in range(model.model[-1].nc)}
    model.names = names_dict(model.names)
    return model


def model_from_checkpoint(ckpt: dict[str, Any]) -> DetectionModel:
    """The EMA weights when present (upstream's choice for inference), else `model`, as float32."""
    model = (ckpt.get("ema") or ckpt["model"]).float()
    return _make_compatible(model)


def load_model(weights: str | Path, device: str | torch.device = "cpu", fuse: bool = False) -> DetectionModel:
    """A float32 eval-mode model from any YOLOv5 checkpoint (ours or upstream's), optionally Conv+BN fused."""
    model = model_from_checkpoint(load_checkpoint(weights))
    if fuse:
        model.fuse()
    model.requires_grad_(False)
    return model.to(select_device(device)).eval()


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """torch.save through a temp file and rename, so an interrupted save never leaves a truncated checkpoint."""
    atomic_write(path, lambda f: torch.save(ckpt, f))
    LOGGER.debug(f"saved {path}")


def training_checkpoint(model: nn.Module, ema, optimizer: torch.optim.Optimizer, epoch: int, best_fitness: float,
                        opt: dict) -> dict[str, Any]:
    """What --resume continues from: fp16 copies of the model and of its EMA (a utils.ema.ModelEMA), and the
    optimizer's state."""
    return {"epoch": epoch, "best_fitness": best_fitness, "model": deepcopy(model).half(),
            "ema": deepcopy(ema.ema).half(), "updates": ema.updates, "optimizer": optimizer.state_dict(),
            "opt": opt, "date": datetime.now().isoformat()}


def finished_checkpoint(model: nn.Module, opt: dict | None = None, date: str | None = None,
                        **extra: Any) -> dict[str, Any]:
    """A checkpoint with nothing left to resume: an fp16 copy of `model` (gradients off) and no EMA or optimizer,
    ready for val.py, detect.py, export.py, prune.py and finetune.py. `extra` keys are stored beside (prune.py's
    `prune` summary, for example)."""
    return {"epoch": -1, "best_fitness": None, "model": deepcopy(model).half().requires_grad_(False), "ema": None,
            "updates": None, "optimizer": None, "opt": {} if opt is None else opt, **extra,
            "date": date or datetime.now().isoformat()}


def strip_optimizer(path: str | Path) -> None:
    """Finished runs keep only the EMA model (as `model`), like upstream: a third of the size, nothing to resume."""
    ckpt = load_checkpoint(path)
    done = finished_checkpoint(ckpt.get("ema") or ckpt["model"], ckpt.get("opt"), ckpt.get("date"))
    save_checkpoint({**ckpt, **done}, path)
