"""Prune a trained YOLOv5 model's channels (network slimming) and write a slimmer model and its yaml.

    python prune.py --weights last.pt --percent 0.6              # the newest runs/*/*/weights/last.pt if not here
    python prune.py --weights runs/train-sparse/exp/weights/last.pt --percent 0.5 --data data/synthetic.yaml
    python prune.py --weights last.pt --percent 0.5 --round 8 --skip-shortcut

Channels are ranked by |gamma| of their BatchNorm with one global threshold; channels that must stay aligned (a
residual add's inputs, depth-wise convs) form groups scored as one. No layer is emptied (--min-channels); the
constant output act(beta) of removed channels is folded into their consumers. Writes runs/prune/exp/:
pruned.pt (a normal checkpoint: val.py, detect.py, finetune.py and prune.py take it), pruned.yaml (every width
explicit; `train.py --cfg pruned.yaml` trains it from scratch), report.md, report.json and channels.png.
With --data, the model is evaluated before and after pruning. Next: python finetune.py --weights .../pruned.pt
"""

from __future__ import annotations

import argparse
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn

import val
from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from utils.data import check_dataset
from utils.errors import UserError, cli
from utils.files import increment_path, yaml_load
from utils.log import LOGGER, colorstr
from utils.pruning.graph import probe_size
from utils.pruning.pruner import METHODS, PruneResult, PruneSettings, prune_model
from utils.pruning.report import EVAL_KEYS, plot_channels, write_report
from utils.pruning.yaml_writer import save_model_yaml
from utils.torch_utils import count_params, model_flops, select_device

ROOT = Path(__file__).resolve().parent
PREFIX = colorstr("prune: ")


def fraction(text: str) -> float:
    """--percent as a number; a non-number is one clear line (UserError), not argparse's usage dump. The range is
    PruneSettings.check's."""
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--percent must be a number in [0, 1), the share of channels to remove; got '{text}'") \
            from None


def resolve_weights(w: str) -> Path:
    """A path as given; a bare file name that is not here is the newest runs/*/*/weights/<name>."""
    p = Path(w)
    if p.is_file():
        return p
    if p.parent == Path("."):
        for base in dict.fromkeys((Path("runs").resolve(), ROOT / "runs")):  # here first, then the repo's runs/
            found = list(base.glob(f"*/*/weights/{p.name}"))
            if found:
                break
        if found:
            newest = max(found, key=lambda q: q.stat().st_mtime)
            shown = newest.relative_to(Path.cwd()) if newest.is_relative_to(Path.cwd()) else newest
            LOGGER.info(f"{PREFIX}{w} is not in this folder; using the newest {p.name} under runs/: {shown}")
            return newest
        raise UserError(f"weights not found: {w} (neither here nor as runs/*/*/weights/{p.name})")
    raise UserError(f"weights not found: {w}")


def describe(model: nn.Module, imgsz: int) -> dict:
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    return {"params": count_params(model), "GFLOPs": round(model_flops(model, imgsz), 4), "bn_channels": bn}


@torch.no_grad()
def check_rebuild(pruned: nn.Module, yaml_path: Path) -> None:
    """The written yaml must rebuild the pruned model: same parameter count, strict state_dict load, same output."""
    rebuilt = DetectionModel(yaml_load(yaml_path)).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    if count_params(rebuilt) != count_params(pruned):
        raise RuntimeError(f"{yaml_path} rebuilds {count_params(rebuilt):,} parameters, not {count_params(pruned):,}")
    s = probe_size(pruned)
    x = torch.rand(1, pruned.yaml.get("ch", 3), s, s, generator=torch.Generator().manual_seed(0))
    a, b = pruned.eval()(x)[0], rebuilt(x)[0]
    if not torch.allclose(a, b, atol=1e-5, rtol=1e-5):
        raise RuntimeError(f"{yaml_path}: the rebuilt model's output differs by {(a - b).abs().max():.3g}")


def checkpoint(pruned: nn.Module, result: PruneResult, opt: argparse.Namespace, source: dict) -> dict:
    """An upstream-style checkpoint of the pruned model (fp16, no optimizer), ready for val, detect and finetune."""
    return {"epoch": -1, "best_fitness": None, "model": deepcopy(pruned).half().requires_grad_(False), "ema": None,
            "updates": None, "optimizer": None, "opt": {k: str(v) if isinstance(v, Path) else v for k, v in
                                                        vars(opt).items()},
            "train_opt": source.get("opt"), "prune": result.summary(), "date": datetime.now().isoformat()}


def evaluate(model: nn.Module, loader, names) -> dict:
    return {k: round(v, 5) for k, v in val.evaluate_model(model, loader, names).items()}


def print_summary(rec: dict) -> None:
    b, a, s = rec["before"], rec["after"], rec["settings"]
    rows = [("parameters", f"{b['params']:,}", f"{a['params']:,}", a["params"] / b["params"]),
            (f"GFLOPs@{rec['imgsz']}", f"{b['GFLOPs']:.2f}", f"{a['GFLOPs']:.2f}", a["GFLOPs"] / b["GFLOPs"]),
            ("BN channels", f"{b['bn_channels']:,}", f"{a['bn_channels']:,}", a["bn_channels"] / b["bn_channels"])]
    if "eval" in b:
        rows += [(k, f"{b['eval'][k]:.3f}", f"{a['eval'][k]:.3f}",
                  a["eval"][k] / b["eval"][k] if b["eval"][k] else float("nan")) for k in EVAL_KEYS]
    LOGGER.info(f"\n{PREFIX}{s['method']} --percent {s['percent']:g}: threshold {s['threshold']:.4g}, "
                f"{s['removed_share']:.1%} of group channels removed (safe maximum {s['safe_percent']:.3f})")
    LOGGER.info(f"{'':<14}{'before':>14}{'after':>14}{'ratio':>8}")
    for name, x, y, r in rows:
        LOGGER.info(f"{name:<14}{x:>14}{y:>14}{r:>8.3f}")


def run(opt: argparse.Namespace) -> dict:
    t0 = time.time()
    settings = PruneSettings(opt.method, opt.percent, opt.skip_shortcut, opt.min_channels, opt.round,
                             opt.group_score)
    try:
        settings.check()
    except ValueError as e:
        raise UserError(str(e)) from None
    weights = resolve_weights(opt.weights)
    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt).eval()
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise UserError(f"{weights}: the model has no BatchNorm layers (fused?); slimming needs them")
    device = select_device(opt.device)
    data = check_dataset(opt.data, splits=()) if opt.data else None
    loader = None
    if data:
        if len(model.names) != data["nc"]:
            raise UserError(f"{weights} predicts {len(model.names)} classes but {opt.data} has nc={data['nc']}")
        stride = max(int(model.stride.max()), 32)
        loader = val.val_loader(data, "val", opt.imgsz, opt.batch_size, stride, opt.workers, source=opt.data)
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)

    before = describe(model, opt.imgsz)
    if loader is not None:
        LOGGER.info(f"{PREFIX}evaluating {weights.name} before pruning")
        before["eval"] = evaluate(model.to(device), loader, model.names)
        model = model.cpu()
    result = prune_model(model, settings)
    pruned = result.model
    after = describe(pruned, opt.imgsz)
    if loader is not None:
        LOGGER.info(f"{PREFIX}evaluating the pruned model")
        after["eval"] = evaluate(pruned.to(device), loader, pruned.names)
        pruned = pruned.cpu()

    header = (f"Pruned from {weights} by prune.py --method {opt.method} --percent {opt.percent:g}"
              f"{' --skip-shortcut' if opt.skip_shortcut else ''} ({datetime.now():%Y-%m-%d}).\n"
              "Every width is explicit (exact_widths); C3/SPPF inner widths are the trailing {...} argument.\n"
              "Train from scratch: python train.py --cfg pruned.yaml --weights ''")
    notes = _layer_notes(result.layers, len(pruned.model))
    save_model_yaml(save_dir / "pruned.yaml", pruned.yaml, header, notes)
    check_rebuild(pruned, save_dir / "pruned.yaml")
    rec = {"weights": str(weights), "save_dir": str(save_dir), "imgsz": opt.imgsz, "data": opt.data or None,
           "eval_split": "val" if data else None, "settings": result.summary(), "before": before, "after": after,
           "layers": result.layers, "seconds": 0.0}
    plot_channels(result.layers, save_dir / "channels.png",
                  f"{weights.name}: {opt.method} --percent {opt.percent:g} (threshold {result.threshold:.3g})")
    save_checkpoint(checkpoint(pruned, result, opt, ckpt), save_dir / "pruned.pt")
    rec["seconds"] = round(time.time() - t0, 2)
    write_report(save_dir, rec)
    print_summary(rec)
    if result.clamped:
        LOGGER.warning(f"{PREFIX}WARNING: {len(result.clamped)} layer(s) had every channel below the threshold and "
                       f"keep --min-channels {opt.min_channels} (largest safe percent {result.safe_percent:.3f})")
    LOGGER.info(f"{PREFIX}done in {rec['seconds']:.1f}s. Results saved to {colorstr('bold', str(save_dir))} "
                f"(pruned.pt, pruned.yaml, report.md, report.json, channels.png)\n"
                f"Next: python finetune.py --weights {save_dir / 'pruned.pt'}"
                f"{' --data ' + opt.data if opt.data else ''}")
    return rec


def _layer_notes(layers: list[dict], n: int) -> list[str]:
    """'kept a/b BN channels' after each of the n yaml layers whose BN widths changed (from the per-BN table)."""
    kept, total = [0] * n, [0] * n
    for x in layers:  # names are model.<layer>.<...>
        i = int(x["name"].split(".")[1])
        kept[i] += x["kept"]
        total[i] += x["channels"]
    return [f"kept {k}/{t} BN channels" if k != t else "" for k, t in zip(kept, total)]


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default="last.pt", help="checkpoint to prune (bare name: newest in runs/)")
    p.add_argument("--percent", type=fraction, default=0.5, help="share of prunable channels to remove, in [0, 1)")
    p.add_argument("--method", default="slim", choices=METHODS, help="channel importance")
    p.add_argument("--skip-shortcut", action="store_true", help="leave channels tied by residual adds unpruned")
    p.add_argument("--min-channels", type=int, default=1, help="never keep fewer channels in a layer")
    p.add_argument("--round", type=int, default=1, help="round each kept width up to a multiple of this (8 for GPUs)")
    p.add_argument("--group-score", default="max", choices=("max", "mean"),
                   help="score of a channel shared by several BNs (a residual group): max or mean of their |gamma|")
    p.add_argument("--data", type=str, default="", help="dataset yaml: evaluate before and after pruning")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="size for GFLOPs and evaluation")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--device", default="", help="evaluation device: cpu, 0, ...")
    p.add_argument("--project", default=str(ROOT / "runs/prune"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    opt = p.parse_args(argv)
    if opt.batch_size < 1 or opt.imgsz < 32:
        raise UserError("--batch-size must be >= 1 and --imgsz >= 32")
    return opt


@cli
def main(argv: list[str] | None = None) -> dict:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
