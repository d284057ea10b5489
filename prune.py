"""Prune a trained YOLOv5 model's channels (network slimming) and write a slimmer model and its yaml.

    python prune.py --weights last.pt --percent 0.6              # the newest runs/*/*/weights/last.pt if not here
    python prune.py --weights runs/train-sparse/exp/weights/last.pt --percent 0.5 --data data/synthetic.yaml
    python prune.py --weights last.pt --percent 0.5 --round 8 --skip-shortcut
    python prune.py --weights best.pt --method l1 --flops-target 0.5          # filter norms, half the GFLOPs
    python prune.py --weights best.pt --method eagleeye --flops-target 0.5 --data data/coco128.yaml
    python prune.py --weights last.pt --method layer+slim --layers 2 --percent 0.4
    python prune.py --weights best.pt --method unstructured --percent 0.7     # zeros, same shapes
    python prune.py --weights best.pt --method taylor --percent 0.4 --data data/coco128.yaml
    python prune.py --weights best.pt --method taylor --flops-target 0.5 --allocation uniform --data data/bccd.yaml
    python prune.py --weights best.pt --sensitivity --data data/coco128.yaml  # analysis only: sensitivity.csv/png
    python prune.py --weights best.pt --method sensitivity --max-drop 0.02 --data data/coco128.yaml

Channels are ranked by |gamma| of their BatchNorm with one global threshold; channels that must stay aligned (a
residual add's inputs, depth-wise convs) form groups scored as one. No layer is emptied (--min-channels); the
constant output act(beta) of removed channels is folded into their consumers. Writes runs/prune/exp/:
pruned.pt (a normal checkpoint: val.py, detect.py, finetune.py and prune.py take it), pruned.yaml (every width
explicit; `train.py --cfg pruned.yaml` trains it from scratch), report.md, report.json and channels.png.
With --data, the model is evaluated before and after pruning. Next: python finetune.py --weights .../pruned.pt

Methods: slim (|gamma|, after train_sparse.py), l1 (filter L1 norms, no sparse training), taylor (first-order loss
change of removing a channel, from gradients on training batches; needs --data), eagleeye (random widths at
--flops-target scored after adaptive BN on held-out training images; needs --data), sensitivity (each layer cut by
the ratio its own curve allows within --max-drop; needs --data), layer (--layers N residual bottlenecks with the
smallest gammas; layer+slim then slims), unstructured (weights, not channels), tp-magnitude and tp-taylor
(Torch-Pruning's pruners cut to --flops-target, without folding; tp-taylor needs --data). Each is an object in
utils/pruning/methods (the METHODS registry).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import numpy as np
import torch.nn as nn

from utils.checkpoint import finished_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from utils.data import check_dataset
from utils.dataloaders import create_dataloader
from utils.errors import UserError, cli
from utils.evaluate import evaluate_model, val_loader
from utils.files import increment_path, newest_run_file, staged_outputs
from utils.labels import list_images
from utils.log import LOGGER, colorstr
from utils.pruning import sensitivity
from utils.pruning.collapse import Collapse, cut_warning
from utils.pruning.data import SearchData, first_batches, yolo_loss
from utils.pruning.graph import build_groups
from utils.pruning.methods import METHODS, Method, PruneResult, PruneSettings
from utils.pruning.methods.channels import ALLOCATIONS
from utils.pruning.methods.taylor import SCORES as TAYLOR_SCORES
from utils.pruning.methods.sensitivity import Sensitivity
from utils.pruning.pruner import prune_model
from utils.pruning.report import EVAL_KEYS, decision, model_figures, plot_channels, write_report
from utils.pruning.sensitivity import RATIOS
from utils.pruning.yaml_writer import check_rebuild, save_model_yaml
from utils.torch_utils import select_device

ROOT = Path(__file__).resolve().parent
PREFIX = colorstr("prune: ")
DEFAULT_METHOD = "slim"


def fraction(text: str) -> float | str:
    """--percent as a number or 'auto'; anything else is one clear line (UserError), not argparse's usage dump. The
    range is PruneSettings.check's."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--percent must be a number in [0, 1), the share of channels to remove, or auto; got "
                        f"'{text}'") from None


def resolve_weights(w: str) -> Path:
    """A path as given; a bare file name that is not here is the newest runs/*/*/weights/<name>."""
    p = Path(w)
    if p.is_file():
        return p
    if p.parent == Path("."):
        newest = newest_run_file(p.name, (Path("runs").resolve(), ROOT / "runs"))  # here first, then the repo's
        if newest:
            shown = newest.relative_to(Path.cwd()) if newest.is_relative_to(Path.cwd()) else newest
            LOGGER.info(f"{PREFIX}{w} is not in this folder; using the newest {p.name} under runs/: {shown}")
            return newest
        raise UserError(f"weights not found: {w} (neither here nor as runs/*/*/weights/{p.name})")
    raise UserError(f"weights not found: {w}")


def search_data(data: dict, opt: argparse.Namespace, model: nn.Module) -> SearchData:
    """The data-driven methods' data from the training split: --calib-batches training batches (adaptive BN, taylor's
    gradients), a scorer (mAP50) on held-out images (a fifth of the split, at most 500, drawn with --seed; the batches
    never come from them), the training loss (hyp.scratch-low's gains) and, for a loss sensitivity analysis, the first
    held-out batches in memory (sensitivity.HELD_IMAGES images at most)."""
    files = list_images(data["train"])
    if len(files) < 2:
        raise UserError(f"{opt.data}: --method {opt.method} needs at least 2 training images (batches and held-out)")
    order = np.random.default_rng(opt.seed).permutation(len(files))
    n_hold = min(max(len(files) // 5, 1), 500)
    hold, rest = [files[i] for i in order[:n_hold]], [files[i] for i in order[n_hold:]]
    stride = max(int(model.stride.max()), 32)
    calib_loader = create_dataloader(rest, opt.imgsz, opt.batch_size, stride, shuffle=True, workers=opt.workers,
                                     nc=data["nc"], seed=opt.seed, prefix=colorstr("calib: "))[0]
    batches = first_batches(calib_loader, opt.calib_batches * opt.batch_size)
    hold_loader = create_dataloader(hold, opt.imgsz, opt.batch_size, stride, rect=True, pad=0.5, workers=opt.workers,
                                    nc=data["nc"], prefix=colorstr("held-out: "))[0]
    analysis = (opt.sensitivity or "held" in METHODS[opt.method].needs) and not opt.sensitivity_csv
    held = first_batches(hold_loader, sensitivity.HELD_IMAGES) if analysis and opt.sensitivity_score == "loss" else []
    calib = min(len(batches), sensitivity.CALIB_BATCHES)
    LOGGER.info(f"{PREFIX}{len(batches)} training batches from {len(rest)} images; held-out mAP50 on {len(hold)}"
                + (f"; sensitivity: held-out loss on {sum(len(x) for x, _ in held)} of them, adaptive BN on the first "
                   f"{calib} batches" if held else ""))
    return SearchData(batches, lambda m: evaluate_model(m, hold_loader, m.names)["mAP50"],
                      yolo_loss(model.model[-1].nl, data["nc"], opt.imgsz), held=held,
                      sensitivity_score=opt.sensitivity_score, sensitivity_calib=calib)


def checkpoint(pruned: nn.Module, summary: dict, opt: argparse.Namespace, source: dict) -> dict:
    """An upstream-style checkpoint of the pruned model (fp16, no optimizer), ready for val, detect and finetune;
    `summary`: report.json's settings."""
    return finished_checkpoint(pruned, {k: str(v) if isinstance(v, Path) else v for k, v in vars(opt).items()},
                               train_opt=source.get("opt"), prune=summary)


def evaluate(model: nn.Module, loader, names) -> dict:
    return {k: round(v, 5) for k, v in evaluate_model(model, loader, names).items()}


def print_summary(rec: dict) -> None:
    b, a, s = rec["before"], rec["after"], rec["settings"]
    rows = [("parameters", f"{b['params']:,}", f"{a['params']:,}", a["params"] / b["params"]),
            (f"GFLOPs@{rec['imgsz']}", f"{b['GFLOPs']:.2f}", f"{a['GFLOPs']:.2f}", a["GFLOPs"] / b["GFLOPs"]),
            ("BN channels", f"{b['bn_channels']:,}", f"{a['bn_channels']:,}", a["bn_channels"] / b["bn_channels"])]
    if not METHODS[s["method"]].structured:
        rows.append(("zero weights", f"{b['zero_share']:.2%}", f"{a['zero_share']:.2%}", float("nan")))
    if "eval" in b:
        rows += [(k, f"{b['eval'][k]:.3f}", f"{a['eval'][k]:.3f}",
                  a["eval"][k] / b["eval"][k] if b["eval"][k] else float("nan")) for k in EVAL_KEYS]
    LOGGER.info(f"\n{PREFIX}{rec['command']}: {decision(s)}")
    LOGGER.info(f"{'':<14}{'before':>14}{'after':>14}{'ratio':>8}")
    for name, x, y, r in rows:
        LOGGER.info(f"{name:<14}{x:>14}{y:>14}" + (f"{r:>8.3f}" if r == r else f"{'-':>8}"))


def warn_live(s: dict) -> None:
    """One line, as soon as the cut is made, when it removed channels that had not collapsed (`s`: the summary)."""
    if s.get("live_removed"):
        c = Collapse(s["collapsed_share"], s["collapse_threshold"], s["group_channels"])
        remedy = METHODS[s["method"]].remedy
        LOGGER.warning(f"{PREFIX}{cut_warning(remedy, s['removed_share'], c, s['live_removed'])}")


def warn_drop(rec: dict) -> None:
    """One line when the measured mAP50 fell by more than half."""
    s, b, a = rec["settings"], rec["before"], rec["after"]
    if "eval" in b and a["eval"]["mAP50"] < 0.5 * b["eval"]["mAP50"]:
        LOGGER.warning(f"{PREFIX}WARNING: mAP50 fell by more than half, {b['eval']['mAP50']:.3f} -> "
                       f"{a['eval']['mAP50']:.3f}: this model needs fine-tuning (finetune.py) before it is useful"
                       + (f"; remedy: {METHODS[s['method']].remedy}" if s.get("live_removed") else ""))


IGNORED = "scores channels its own way, so it would change nothing"
METHOD_OPTIONS = (  # (option, its default, the methods that read it, why another ignores it): prune.py stops instead
    ("allocation", "global", "the ranked methods", "decides each layer's width itself"),
    ("max_layer_percent", 1.0, "the ranked methods", "decides each layer's width itself"),
    ("group_score", "max", "the methods that rank BN |gamma|", IGNORED),
    ("taylor_score", "bn", "the Taylor method", IGNORED),
)


def settings_from(opt: argparse.Namespace) -> tuple[Method, PruneSettings]:
    """The method (--method with its own options) and the shared settings; UserError for what they cannot honour."""
    auto = opt.percent == "auto"
    method = METHODS[opt.method].from_flags(vars(opt))
    settings = PruneSettings(0.0 if auto else opt.percent, opt.skip_shortcut, opt.min_channels, opt.round,
                             opt.flops_target, opt.calib_batches, opt.seed, opt.imgsz, opt.adaptive_bn, auto)
    try:
        settings.check(method)
        if opt.sensitivity:
            Sensitivity.from_flags(vars(opt)).check_ratios()
    except ValueError as e:
        raise UserError(str(e)) from None
    for key, default, who, why in METHOD_OPTIONS:  # an option the chosen method has no field for would be ignored
        if getattr(opt, key) != default and key not in {f.name for f in fields(METHODS[opt.method])}:
            users = ", ".join(name for name, cls in METHODS.items() if key in {f.name for f in fields(cls)})
            raise UserError(f"--{key.replace('_', '-')} {getattr(opt, key)} applies to {who}: --method {users}; "
                            f"--method {opt.method} {why}")
    if opt.sensitivity and opt.method != DEFAULT_METHOD:
        raise UserError("--sensitivity analyses the model and prunes nothing; for pruning by it use "
                        "--method sensitivity --max-drop X")
    needs = "--sensitivity" if opt.sensitivity else "--adaptive-bn" if opt.adaptive_bn else \
        f"--method {opt.method}" if method.needs else ""
    if needs and not opt.data:
        raise UserError(f"{needs} needs --data (training batches and held-out training images to score on)")
    return method, settings


def flag_record(opt: argparse.Namespace) -> dict:
    """The head of report.json's settings: every cut flag prune.py ran with (other methods' options too), in the order
    the report has always listed them; the method's summary follows and adds what it decided."""
    auto = opt.percent == "auto"
    return {"method": opt.method, "percent": 0.0 if auto else opt.percent, "skip_shortcut": opt.skip_shortcut,
            "min_channels": opt.min_channels, "round_to": opt.round, "group_score": opt.group_score,
            "flops_target": opt.flops_target, "layers": opt.layers, "candidates": opt.candidates,
            "calib_batches": opt.calib_batches, "seed": opt.seed, "imgsz": opt.imgsz, "max_drop": opt.max_drop,
            "ratios": tuple(opt.ratios), "adaptive_bn": opt.adaptive_bn, "auto": auto, "allocation": opt.allocation,
            "max_layer_percent": opt.max_layer_percent}


def command(method: Method, s: PruneSettings) -> str:
    """The flags that decided this pruning, as a user would type them."""
    percent = "auto" if s.auto else f"{s.percent:g}"
    c = f"--method {method.name}"
    c += f" --flops-target {s.flops_target:g}" if s.flops_target else \
        (f" --percent {percent}" if method.takes_percent else "")
    c += method.flags(s) + (" --adaptive-bn" if s.adaptive_bn else "")
    return c + (" --skip-shortcut" if s.skip_shortcut else "") + (f" --round {s.round_to}" if s.round_to > 1 else "")


def load_data(opt: argparse.Namespace, method: Method, model: nn.Module, weights: Path) -> tuple[object, SearchData]:
    """The val loader for the before/after evaluation (None without --data) and the methods' SearchData."""
    loader, search = None, SearchData()
    if opt.data:
        data = check_dataset(opt.data, splits=())
        if len(model.names) != data["nc"]:
            raise UserError(f"{weights} predicts {len(model.names)} classes but {opt.data} has nc={data['nc']}")
        stride = max(int(model.stride.max()), 32)
        loader = val_loader(data, "val", opt.imgsz, opt.batch_size, stride, opt.workers, source=opt.data)
        if method.needs or opt.adaptive_bn or opt.sensitivity:
            search = search_data(data, opt, model)
    if opt.sensitivity_csv:
        try:
            search.curves = sensitivity.load_csv(Path(opt.sensitivity_csv))
        except ValueError as e:
            raise UserError(str(e)) from None
    return loader, search


def run(opt: argparse.Namespace) -> dict:
    t0 = time.time()
    method, settings = settings_from(opt)
    weights = resolve_weights(opt.weights)
    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt).eval()
    if method.structured and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise UserError(f"{weights}: the model has no BatchNorm layers (fused?); channel pruning needs them")
    device = select_device(opt.device)
    loader, search = load_data(opt, method, model, weights)
    if opt.sensitivity:
        return analyse(model, settings, search, opt, weights)

    before = model_figures(model, opt.imgsz)
    if loader is not None:
        LOGGER.info(f"{PREFIX}evaluating {weights.name} before pruning")
        before["eval"] = evaluate(model.to(device), loader, model.names)
        model = model.cpu()
    try:
        result = prune_model(model, settings, search, method)
    except ValueError as e:  # a target the model cannot reach, more layers than it has
        raise UserError(str(e)) from None
    summary = {**flag_record(opt), **result.summary()}
    warn_live(summary)
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    after = model_figures(result.model, opt.imgsz)
    if loader is not None:
        LOGGER.info(f"{PREFIX}evaluating the pruned model")
        after["eval"] = evaluate(result.model.to(device), loader, result.model.names)
        result.model.cpu()
    rec = {"weights": str(weights), "save_dir": str(save_dir), "imgsz": opt.imgsz, "data": opt.data or None,
           "eval_split": "val" if loader is not None else None, "command": command(method, settings),
           "settings": summary, "before": before, "after": after, "layers": result.layers, "seconds": 0.0}
    write_outputs(save_dir, rec, result, opt, ckpt, t0)
    print_summary(rec)
    warn_drop(rec)
    if result.clamped:
        LOGGER.warning(f"{PREFIX}WARNING: {len(result.clamped)} layer(s) had every channel below the threshold and "
                       f"keep --min-channels {opt.min_channels} (largest safe percent {result.safe_percent:.3f})")
    LOGGER.info(f"{PREFIX}done in {rec['seconds']:.1f}s. Results saved to {colorstr('bold', str(save_dir))} "
                f"(pruned.pt, pruned.yaml, report.md, report.json, {_plot_names(method)})\n"
                f"Next: python finetune.py --weights {save_dir / 'pruned.pt'}"
                f"{' --data ' + opt.data if opt.data else ''}")
    return rec


def write_outputs(save_dir: Path, rec: dict, result: PruneResult, opt: argparse.Namespace, source: dict,
                  t0: float) -> None:
    """pruned.yaml (checked to rebuild the model), the plots, pruned.pt and report.json/md, all or nothing: a rerun
    into the same folder that dies changes nothing."""
    pruned, weights = result.model, Path(rec["weights"])
    header = (f"Pruned from {rec['weights']} by prune.py {rec['command']} ({datetime.now():%Y-%m-%d}).\n"
              "Every width is explicit (exact_widths); C3/SPPF inner widths are the trailing {...} argument.\n"
              "Train from scratch: python train.py --cfg pruned.yaml --weights ''")
    with staged_outputs(save_dir) as out:
        save_model_yaml(out / "pruned.yaml", pruned.yaml, header, _layer_notes(result.layers, len(pruned.model)))
        check_rebuild(pruned, out / "pruned.yaml")
        _plots(result, out, f"{weights.name}: {rec['command']}")
        save_checkpoint(checkpoint(pruned, rec["settings"], opt, source), out / "pruned.pt")
        rec["seconds"] = round(time.time() - t0, 2)
        write_report(out, rec)


def _plot_names(method: Method) -> str:
    return ", ".join(("channels.png", *method.outputs))


def analyse(model: nn.Module, settings: PruneSettings, search: SearchData, opt: argparse.Namespace,
            weights: Path) -> dict:
    """prune.py --sensitivity: each layer pruned alone at --ratios and scored (--sensitivity-score);
    sensitivity.csv/png, the safest and most fragile layers. Nothing is pruned."""
    t0 = time.time()
    analysis = Sensitivity.from_flags(vars(opt))
    groups = build_groups(model, settings.skip_shortcut)
    try:
        scores = analysis.scores(model, groups, settings, search)  # the channels --method sensitivity keeps
        base, curves = analysis.curves(model, groups, scores, settings, search)
    except ValueError as e:
        raise UserError(str(e)) from None
    metric = curves[0].metric if curves else "mAP50"
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    with staged_outputs(save_dir) as out:
        sensitivity.save_csv(out / "sensitivity.csv", base, curves)
        sensitivity.plot(out / "sensitivity.png", base, curves, f"{weights.name}: sensitivity of {len(curves)} layers")
    rank = sensitivity.ranking(curves, base)
    n = min(5, len(rank))
    unpruned = f"held-out loss {base:.4g} per image (unpruned, the same adaptive BN)" if metric == "loss" else \
        f"mAP50 {base:.3f} on held-out training images (unpruned)"
    LOGGER.info(f"\n{PREFIX}{unpruned}; mean {sensitivity.DROPS[metric]} over the ratios "
                f"{', '.join(map(str, analysis.ratios))}:")
    LOGGER.info("  safest:       " + ", ".join(f"{name} {d:+.3f}" for name, d in rank[:n]))
    LOGGER.info("  most fragile: " + ", ".join(f"{name} {d:+.3f}" for name, d in reversed(rank[-n:])))
    LOGGER.info(f"{PREFIX}done in {time.time() - t0:.1f}s. Results saved to {colorstr('bold', str(save_dir))} "
                f"(sensitivity.csv, sensitivity.png)\n"
                f"Next: python prune.py --weights {weights} --method sensitivity --max-drop "
                f"{sensitivity.EXAMPLE_DROP[metric]:g} --data {opt.data} "
                f"--sensitivity-csv {save_dir / 'sensitivity.csv'}")
    return {"weights": str(weights), "save_dir": str(save_dir), "metric": metric, "base": base, "ranking": rank,
            "curves": [vars(c) for c in curves]}


def _plots(result: PruneResult, save_dir: Path, title: str) -> None:
    rows, unit = result.method.plot_rows(result)
    plot_channels(rows, save_dir / "channels.png", title, unit=unit)
    result.method.save_extras(result, save_dir, title)


def _layer_notes(layers: list[dict], n: int) -> list[str]:
    """'kept a/b BN channels' (or 'zeros a/b conv weights') after each of the n yaml layers that changed."""
    zeros = bool(layers) and "zeros" in layers[0]
    a, total = [0] * n, [0] * n
    for x in layers:  # names are model.<layer>.<...>
        i = int(x["name"].split(".")[1])
        a[i] += x["zeros"] if zeros else x["kept"]
        total[i] += x["weights"] if zeros else x["channels"]
    if zeros:
        return [f"zeros {k}/{t} conv weights" if k else "" for k, t in zip(a, total)]
    return [f"kept {k}/{t} BN channels" if k != t else "" for k, t in zip(a, total)]


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default="last.pt", help="checkpoint to prune (bare name: newest in runs/)")
    p.add_argument("--percent", type=fraction, default=0.5,
                   help="share of prunable channels to remove, in [0, 1), or auto: the share that has collapsed")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help="what decides the cut (see above)")
    p.add_argument("--flops-target", type=float, default=0.0,
                   help="keep this share of the GFLOPs instead of --percent (slim, l1, layer+slim; eagleeye needs it)")
    p.add_argument("--layers", type=int, default=0, help="layer, layer+slim: residual bottlenecks to remove")
    p.add_argument("--candidates", type=int, default=20, help="eagleeye: random sub-nets to evaluate")
    p.add_argument("--calib-batches", type=int, default=8,
                   help="training batches: adaptive BN (eagleeye, sensitivity, --adaptive-bn), taylor's gradients")
    p.add_argument("--seed", type=int, default=0, help="seed of eagleeye's draws and of the held-out split")
    p.add_argument("--max-drop", type=float, default=0.0,
                   help="sensitivity: what each layer alone may cost in the analysis' score: the relative increase of "
                        "the held-out loss (e.g. 0.05 = 5%%) or, for a --sensitivity-score map analysis, the mAP50 "
                        "lost (e.g. 0.02)")
    p.add_argument("--sensitivity", action="store_true",
                   help="only analyse: prune each layer alone at --ratios, write sensitivity.csv/png (needs --data)")
    p.add_argument("--sensitivity-score", default="loss", choices=("loss", "map"),
                   help="sensitivity: held-out YOLOv5 loss (fast, no NMS) or mAP50 (the slow reference)")
    p.add_argument("--sensitivity-csv", default="", help="method sensitivity: reuse this analysis instead of rerunning")
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="sensitivity: shares of a layer tried")
    p.add_argument("--adaptive-bn", action="store_true",
                   help="recompute the pruned model's BN statistics on --calib-batches training batches (needs --data)")
    p.add_argument("--skip-shortcut", action="store_true", help="leave channels tied by residual adds unpruned")
    p.add_argument("--min-channels", type=int, default=1, help="never keep fewer channels in a layer")
    p.add_argument("--round", type=int, default=1, help="round each kept width up to a multiple of this (8 for GPUs)")
    p.add_argument("--allocation", default="global", choices=ALLOCATIONS,
                   help="slim, l1, taylor: global = one ranking over all layers; uniform = one share of each layer")
    p.add_argument("--max-layer-percent", type=float, default=1.0,
                   help="slim, l1, taylor with the global ranking: the most of its channels any one layer may lose")
    p.add_argument("--group-score", default="max", choices=("max", "mean"),
                   help="score of a channel shared by several BNs (a residual group): max or mean of their |gamma|")
    p.add_argument("--taylor-score", default="bn", choices=TAYLOR_SCORES,
                   help="taylor: bn = BN gamma/beta terms; weights = every parameter a channel owns (Torch-Pruning's)")
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
