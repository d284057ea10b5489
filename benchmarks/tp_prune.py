"""Torch-Pruning's pruners on a checkpoint of this repo, cut to a share of its GFLOPs, saved as a normal pruned.pt.

    python benchmarks/tp_prune.py --weights best.pt --importance magnitude --gflops 0.5 --data data/bccd.yaml
    python benchmarks/tp_prune.py --weights best.pt --importance taylor --gflops 0.5 --data data/bccd.yaml --imgsz 320

What a Torch-Pruning user would run on a YOLOv5 (benchmarks/compare.py's tp-* baselines; torch-pruning is needed by
this script only): magnitude is tp.pruner.MagnitudePruner with MagnitudeImportance(p=2); taylor is
tp.pruner.MetaPruner with GroupTaylorImportance() on the gradients of the YOLOv5 training loss (prune.py's) summed
over --calib-batches training batches. Both cut every channel group by one local ratio (TP's default), with the Detect
layer ignored (its convs' outputs are the predictions). The ratio is bisected to the smallest one whose model keeps at
most --gflops of the GFLOPs at --imgsz (prune.py --flops-target's rule), on a fresh copy per try.

The result is an ordinary model of this repo: pruned.yaml (every width explicit) rebuilds it with the same parameter
count, a strict state_dict load and the same output, and pruned.pt is the checkpoint prune.py writes, so finetune.py,
val.py and export.py take it. Unlike prune.py, Torch-Pruning does not fold the constant outputs of removed channels
into their consumers: with --data the mAP right after pruning shows what that costs. Writes <project>/<name>/:
pruned.pt, pruned.yaml, report.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import val  # noqa: E402
from prune import check_rebuild, describe, yolo_loss  # noqa: E402
from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from utils.data import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.files import atomic_write, increment_path, staged_outputs  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.pruning.yaml_writer import model_yaml, save_model_yaml  # noqa: E402
from utils.torch_utils import model_flops, select_device  # noqa: E402

PREFIX = colorstr("tp_prune: ")
IMPORTANCE = ("magnitude", "taylor")
MAX_RATIO = 0.95  # TP's ratio is the share of each group's channels removed; 1.0 would empty layers
TRIES = 14  # bisection steps: the ratio to within 6e-5, below one channel of the widest layer of a yolov5n


def tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")  # the package's own __version__ says 1.6.0 in the 1.6.1 wheel


def loss_gradients(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss) -> dict[str, torch.Tensor]:
    """d(YOLOv5 loss)/d(parameter) summed over `batches`, in eval mode (BN statistics untouched, as prune.py's
    taylor does); `loss` is prune.yolo_loss(...)."""
    m = deepcopy(model).float().eval().requires_grad_(True)
    fn = loss(m)
    for imgs, targets in batches:
        fn(m(imgs), targets).backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def pruned_at(model: nn.Module, ratio: float, importance: str, grads: dict[str, torch.Tensor] | None) -> nn.Module:
    """A copy of `model` with every prunable group cut by `ratio` by Torch-Pruning (Detect ignored)."""
    import torch_pruning as tp

    m = deepcopy(model).float().eval().requires_grad_(True)
    s = max(int(m.stride.max()), 32) * 2  # tracing needs one cell at the coarsest level, not the real size
    example = torch.rand(1, m.yaml.get("ch", 3), s, s)
    if importance == "magnitude":
        pruner = tp.pruner.MagnitudePruner(m, example, tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                           ignored_layers=[m.model[-1]])
    else:
        for n, p in m.named_parameters():  # the copy has no gradients: give it the original's
            p.grad = grads[n].clone() if n in grads else None
        pruner = tp.pruner.MetaPruner(m, example, tp.importance.GroupTaylorImportance(), pruning_ratio=ratio,
                                      ignored_layers=[m.model[-1]])
    pruner.step()
    m.zero_grad(set_to_none=True)
    return m.requires_grad_(False)


def tp_prune(model: nn.Module, importance: str, share: float, imgsz: int,
             grads: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict]:
    """The model pruned by the smallest ratio whose GFLOPs at imgsz are at most `share` of the model's, and how."""
    full = model_flops(model, imgsz)
    tries: list[dict] = []

    def attempt(ratio: float) -> tuple[nn.Module, float]:
        m = pruned_at(model, ratio, importance, grads)
        tries.append({"ratio": round(ratio, 6), "share": round(model_flops(m, imgsz) / full, 6)})
        return m, tries[-1]["share"]

    best, kept = attempt(MAX_RATIO)
    if kept > share:
        raise UserError(f"--gflops {share:g}: Torch-Pruning at its largest ratio {MAX_RATIO} still keeps "
                        f"{kept:.3f} of the GFLOPs")
    lo, hi = 0.0, MAX_RATIO
    for _ in range(TRIES):
        mid = (lo + hi) / 2
        m, s = attempt(mid)
        if s > share:
            lo = mid
        else:
            hi, best, kept = mid, m, s
    LOGGER.info(f"{PREFIX}ratio {hi:.4f} keeps {kept:.4f} of {full:.3f} GFLOPs (target {share:g}, "
                f"{len(tries)} tries)")
    best.yaml = model_yaml(best)  # raises where TP left widths that a yaml cannot express
    best.yaml_file = "pruned.yaml"
    return best, {"pruning_ratio": round(hi, 6), "share": kept, "target_share": share, "base_GFLOPs": full,
                  "tries": tries}


def taylor_batches(data: dict, opt: argparse.Namespace, stride: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """--calib-batches shuffled training batches (images in 0..1, targets), drawn with --seed."""
    loader = create_dataloader(data["train"], opt.imgsz, opt.batch_size, stride, shuffle=True, workers=opt.workers,
                               nc=data["nc"], seed=opt.seed, prefix=colorstr("taylor: "))[0]
    out = []
    for imgs, targets, *_ in loader:
        out.append((imgs.float() / 255, targets))
        if len(out) == opt.calib_batches:
            break
    return out


def checkpoint(pruned: nn.Module, opt: argparse.Namespace, source: dict, details: dict) -> dict:
    """prune.py's checkpoint keys: fp16 model, no optimizer; `prune` says what cut it (finetune.py reads it)."""
    summary = {"method": f"tp-{opt.importance}", "torch_pruning": tp_version(), "flops_target": opt.gflops,
               **{k: v for k, v in details.items() if k != "tries"}}
    return {"epoch": -1, "best_fitness": None, "model": deepcopy(pruned).half().requires_grad_(False), "ema": None,
            "updates": None, "optimizer": None, "opt": dict(vars(opt)),
            "train_opt": source.get("opt"), "prune": summary, "date": datetime.now().isoformat()}


def run(opt: argparse.Namespace) -> dict:
    t0 = time.time()
    ckpt = load_checkpoint(opt.weights)
    model = model_from_checkpoint(ckpt).eval()
    data = check_dataset(opt.data, splits=()) if opt.data else None
    if data and len(model.names) != data["nc"]:
        raise UserError(f"{opt.weights} predicts {len(model.names)} classes but {opt.data} has nc={data['nc']}")
    grads = None
    if opt.importance == "taylor":
        if not data:
            raise UserError("--importance taylor needs --data (the loss gradients come from training batches)")
        stride = max(int(model.stride.max()), 32)
        batches = taylor_batches(data, opt, stride)
        grads = loss_gradients(model, batches, yolo_loss(model.model[-1].nl, data["nc"], opt.imgsz))
    pruned, details = tp_prune(model, opt.importance, opt.gflops, opt.imgsz, grads)
    rec = {"weights": str(opt.weights), "imgsz": opt.imgsz, "data": opt.data or None, "torch_pruning": tp_version(),
           "command": f"--importance {opt.importance} --gflops {opt.gflops:g}", "settings": details,
           "before": describe(model, opt.imgsz), "after": describe(pruned, opt.imgsz)}
    if data:
        loader = val.val_loader(data, "val", opt.imgsz, opt.batch_size, max(int(model.stride.max()), 32),
                                opt.workers, source=opt.data)
        device = select_device(opt.device)
        for key, m in (("before", model), ("after", pruned)):
            LOGGER.info(f"{PREFIX}evaluating the model {key} pruning")
            rec[key]["eval"] = {k: round(v, 5) for k, v in val.evaluate_model(m.to(device), loader).items()}
            m.cpu()
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    rec["save_dir"] = str(save_dir)
    with staged_outputs(save_dir) as out:  # all or nothing, as prune.py writes its folder
        save_model_yaml(out / "pruned.yaml", pruned.yaml, f"Pruned from {opt.weights} by benchmarks/tp_prune.py "
                        f"{rec['command']} (Torch-Pruning {tp_version()}).\nEvery width is explicit (exact_widths).")
        check_rebuild(pruned, out / "pruned.yaml")
        save_checkpoint(checkpoint(pruned, opt, ckpt, details), out / "pruned.pt")
        rec["seconds"] = round(time.time() - t0, 2)
        atomic_write(out / "report.json", lambda f: json.dump(rec, f, indent=2), mode="w")
    b, a = rec["before"], rec["after"]
    LOGGER.info(f"{PREFIX}{b['params']:,} -> {a['params']:,} parameters, {b['GFLOPs']:.3f} -> {a['GFLOPs']:.3f} "
                f"GFLOPs" + (f", mAP50-95 {b['eval']['mAP50-95']:.3f} -> {a['eval']['mAP50-95']:.3f}" if data else "")
                + f"; saved to {colorstr('bold', str(save_dir))} (pruned.pt, pruned.yaml, report.json)")
    return rec


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint to prune")
    p.add_argument("--importance", choices=IMPORTANCE, default="magnitude", help="Torch-Pruning importance")
    p.add_argument("--gflops", type=float, default=0.5, help="share of the model's GFLOPs to keep, in (0, 1)")
    p.add_argument("--data", default="", help="dataset yaml: taylor's training batches; evaluate before and after")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="size for GFLOPs and evaluation")
    p.add_argument("--batch-size", type=int, default=8, help="taylor batch size; evaluation batch size")
    p.add_argument("--calib-batches", type=int, default=8, help="taylor: training batches of loss gradients")
    p.add_argument("--seed", type=int, default=0, help="seed of taylor's batches")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    p.add_argument("--device", default="", help="evaluation device: cpu, 0, ... (pruning runs on the CPU)")
    p.add_argument("--project", default=str(ROOT / "runs/tp_prune"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    opt = p.parse_args(argv)
    if not 0 < opt.gflops < 1:
        raise UserError(f"--gflops must be in (0, 1), the share of GFLOPs to keep; got {opt.gflops}")
    if opt.batch_size < 1 or opt.calib_batches < 1 or opt.imgsz < 32:
        raise UserError("--batch-size and --calib-batches must be >= 1, --imgsz >= 32")
    return opt


@cli
def main(argv: list[str] | None = None) -> dict:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
