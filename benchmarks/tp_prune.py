"""Torch-Pruning's pruners on a checkpoint of this repo, cut to a share of its GFLOPs, saved as a normal pruned.pt.

    python benchmarks/tp_prune.py --weights best.pt --importance magnitude --gflops 0.5 --data data/bccd.yaml
    python benchmarks/tp_prune.py --weights best.pt --importance taylor --gflops 0.5 --data data/bccd.yaml --imgsz 320

What a Torch-Pruning user would run on a YOLOv5 (benchmarks/compare.py's tp-* baselines; torch-pruning is needed by
these methods only): the registered methods tp-magnitude and tp-taylor (utils/pruning/methods/tp.py; prune.py
--method tp-magnitude runs the same cut with prune.py's report). magnitude is tp.pruner.MagnitudePruner with
MagnitudeImportance(p=2); taylor is tp.pruner.MetaPruner with GroupTaylorImportance() on the gradients of the YOLOv5
training loss summed over --calib-batches shuffled training batches. Both cut every channel group by one local ratio
(TP's default), with the Detect layer ignored (its convs' outputs are the predictions). The ratio is bisected to the
smallest one whose model keeps at most --gflops of the GFLOPs at --imgsz (prune.py --flops-target's rule), on a fresh
copy per try.

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

import torch.nn as nn  # noqa: E402

from utils.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from utils.data import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.evaluate import evaluate_model, val_loader  # noqa: E402
from utils.files import atomic_write, increment_path, staged_outputs  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.pruning.data import SearchData, first_batches, yolo_loss  # noqa: E402
from utils.pruning.methods import METHODS, PruneSettings  # noqa: E402
from utils.pruning.methods.tp import tp_version  # noqa: E402
from utils.pruning.pruner import prune_model  # noqa: E402
from utils.pruning.report import model_figures  # noqa: E402
from utils.pruning.yaml_writer import check_rebuild, save_model_yaml  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402

PREFIX = colorstr("tp_prune: ")
IMPORTANCE = ("magnitude", "taylor")  # --importance X is the method tp-X


def search_data(data: dict | None, opt: argparse.Namespace, model: nn.Module) -> SearchData:
    """taylor: --calib-batches shuffled training batches (images in 0..1, targets), drawn with --seed, and the loss."""
    if opt.importance != "taylor":
        return SearchData()
    if not data:
        raise UserError("--importance taylor needs --data (the loss gradients come from training batches)")
    loader = create_dataloader(data["train"], opt.imgsz, opt.batch_size, max(int(model.stride.max()), 32),
                               shuffle=True, workers=opt.workers, nc=data["nc"], seed=opt.seed,
                               prefix=colorstr("taylor: "))[0]
    return SearchData(first_batches(loader, opt.calib_batches * opt.batch_size),
                      loss=yolo_loss(model.model[-1].nl, data["nc"], opt.imgsz))


def checkpoint(pruned: nn.Module, opt: argparse.Namespace, source: dict, details: dict) -> dict:
    """prune.py's checkpoint keys: fp16 model, no optimizer; `prune` says what cut it (finetune.py reads it)."""
    summary = {"method": f"tp-{opt.importance}", "torch_pruning": tp_version(), "flops_target": opt.gflops,
               **{k: v for k, v in details.items() if k != "tries"}}
    return {"epoch": -1, "best_fitness": None, "model": deepcopy(pruned).half().requires_grad_(False), "ema": None,
            "updates": None, "optimizer": None, "opt": dict(vars(opt)),
            "train_opt": source.get("opt"), "prune": summary, "date": datetime.now().isoformat()}


def evaluate(rec: dict, data: dict, opt: argparse.Namespace, models: dict[str, nn.Module]) -> None:
    """rec[key]["eval"]: each model's figures on the val split."""
    stride = max(int(models["before"].stride.max()), 32)
    loader = val_loader(data, "val", opt.imgsz, opt.batch_size, stride, opt.workers, source=opt.data)
    device = select_device(opt.device)
    for key, m in models.items():
        LOGGER.info(f"{PREFIX}evaluating the model {key} pruning")
        rec[key]["eval"] = {k: round(v, 5) for k, v in evaluate_model(m.to(device), loader).items()}
        m.cpu()


def run(opt: argparse.Namespace) -> dict:
    t0 = time.time()
    ckpt = load_checkpoint(opt.weights)
    model = model_from_checkpoint(ckpt).eval()
    data = check_dataset(opt.data, splits=()) if opt.data else None
    if data and len(model.names) != data["nc"]:
        raise UserError(f"{opt.weights} predicts {len(model.names)} classes but {opt.data} has nc={data['nc']}")
    search = search_data(data, opt, model)
    method = METHODS[f"tp-{opt.importance}"]()
    try:
        result = prune_model(model, PruneSettings(flops_target=opt.gflops, imgsz=opt.imgsz), search, method)
    except ValueError as e:  # a target Torch-Pruning cannot reach
        raise UserError(str(e)) from None
    pruned, details = result.model, result.details
    rec = {"weights": str(opt.weights), "imgsz": opt.imgsz, "data": opt.data or None, "torch_pruning": tp_version(),
           "command": f"--importance {opt.importance} --gflops {opt.gflops:g}", "settings": details,
           "before": model_figures(model, opt.imgsz), "after": model_figures(pruned, opt.imgsz)}
    if data:
        evaluate(rec, data, opt, {"before": model, "after": pruned})
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
    p.add_argument("--gflops", "--flops-target", type=float, default=0.5,
                   help="share of the model's GFLOPs to keep, in (0, 1)")
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
