"""Compress a detector end to end: base -> (sparse training) -> prune -> fine-tune -> one comparison table.

    python slim.py                                                     # the demo: built-in data, about 10 min on a CPU
    python slim.py --recipe demo-long                                  # the same story, trained longer
    python slim.py --recipe taylor --pretrained yolov5n.pt --data my-data.yaml --imgsz 640  # your data, Taylor
    python slim.py --recipe l1 --pretrained yolov5n.pt --data my-data.yaml --imgsz 640      # your data, filter norms
    python slim.py --recipe slim --pretrained yolov5n.pt --data my-data.yaml --imgsz 640    # network slimming
    python slim.py --recipe l1 --weights runs/train/exp/weights/best.pt --data my-data.yaml # a base you trained

A recipe is a yaml file of this script's options in data/recipes/ (--recipe NAME) or anywhere (--recipe FILE.yaml);
flags on the command line override it. Each stage is one of the repo's scripts, run with the arguments printed
before it and listed in commands.sh, so any stage can be rerun by hand. Outputs in runs/slim/exp/: one folder per
stage, compare/metrics.json (val.py's table, batch-1 latency included), summary.md, summary.json and pipeline.png.
A finished stage leaves stage.json in its folder: rerun with --exist-ok (same --name) and it is skipped, and an
interrupted training stage resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import finetune
import prune
import train
import train_sparse
import val
from utils.data import ROOT
from utils.errors import UserError, cli
from utils.files import atomic_write, yaml_load
from utils.log import LOGGER, colorstr
from utils.pruning.methods.channels import ALLOCATIONS
from utils.stages import PREFIX, Pipeline, add_run_args

RECIPES = ROOT / "data" / "recipes"
DEFAULT_RECIPE = "demo"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="a recipe in data/recipes/ by name, or a yaml file")
    p.add_argument("--data", default="", help="dataset yaml")
    p.add_argument("--cfg", default="", help="model yaml of a base trained from scratch")
    p.add_argument("--pretrained", default="", help="weights the base is fine-tuned from (e.g. yolov5n.pt)")
    p.add_argument("--weights", default="", help="a trained base model (skips base training)")
    p.add_argument("--sparse-weights", default="", help="a finished sparse model (skips base and sparse training)")
    p.add_argument("--epochs", type=int, default=20, help="base training epochs")
    p.add_argument("--patience", type=int, default=0, help="base training: stop after this many epochs without "
                   "improvement (0: train.py's default)")
    p.add_argument("--base-optimizer", choices=("SGD", "Adam", "AdamW"), default="SGD", help="base training optimizer")
    p.add_argument("--base-hyp", default="data/hyps/hyp.small.yaml", help="hyp of base training")
    p.add_argument("--method", default="slim", help="prune.py --method (python prune.py --help lists them)")
    p.add_argument("--hyp", default="data/hyps/hyp.small.yaml", help="hyp of sparse training")
    p.add_argument("--sparse-epochs", type=int, default=0, help="sparse training epochs (0: no sparse training)")
    p.add_argument("--sr", type=float, default=0.0005, help="L1 strength (ignored with --shrink)")
    p.add_argument("--gamma-lr", type=float, default=100.0, help="train_sparse.py --gamma-lr")
    p.add_argument("--shrink", type=float, default=None, help="derive sr from how far the penalty can move a gamma")
    p.add_argument("--polarize", type=float, default=0.0, help="train_sparse.py --polarize (0: plain L1)")
    p.add_argument("--polarize-scope", choices=("layer", "global"), default="layer",
                   help="train_sparse.py --polarize-scope")
    p.add_argument("--sparse-kd", action="store_true",
                   help="sparse-train with the base model as teacher (train_sparse.py --teacher)")
    p.add_argument("--percent", default="0.5", help="prune.py --percent: a share or auto (without --flops-target)")
    p.add_argument("--flops-target", type=float, default=0.0, help="prune.py --flops-target (0: cut --percent)")
    p.add_argument("--round", type=int, default=1, help="prune.py --round (16 for fast ONNX Runtime CPU kernels)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="global", help="prune.py --allocation")
    p.add_argument("--max-layer-percent", type=float, default=1.0, help="prune.py --max-layer-percent")
    p.add_argument("--skip-shortcut", action="store_true", help="sparse-train and prune without residual groups")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--finetune-hyp", default="data/hyps/hyp.small.yaml", help="hyp of fine-tuning")
    p.add_argument("--kd", action="store_true", help="also finetune with the base model as teacher, for comparison")
    p.add_argument("--noval", action="store_true", help="every training stage validates only at its end")
    add_run_args(p, ROOT / "runs/slim")
    return p


def recipe_file(name: str) -> Path:
    f = Path(name) if name.endswith((".yaml", ".yml")) else RECIPES / f"{name}.yaml"
    if not f.is_file():
        known = ", ".join(sorted(r.stem for r in RECIPES.glob("*.yaml")))
        raise UserError(f"--recipe {name}: no such recipe (in data/recipes/: {known}; or give a .yaml file)")
    return f


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The recipe's settings as defaults, the command line's flags over them."""
    p = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=DEFAULT_RECIPE)
    f = recipe_file(pre.parse_known_args(argv)[0].recipe)
    recipe = yaml_load(f) or {}
    options = {a.dest for a in p._actions} - {"help", "recipe"}
    unknown = sorted(set(recipe) - options)
    if unknown:
        raise UserError(f"{f}: unknown setting {', '.join(unknown)} (a recipe's keys are this script's options with "
                        "_ for -, e.g. sparse_epochs)")
    p.set_defaults(**recipe)
    return check_opt(p.parse_args(argv))


def check_opt(opt: argparse.Namespace) -> argparse.Namespace:
    if not opt.data:
        raise UserError(f"recipe {opt.recipe} needs --data (a dataset yaml)")
    if opt.sparse_weights and not opt.weights:
        raise UserError("--sparse-weights needs --weights (the base model of the comparison)")
    if not (opt.weights or opt.pretrained or opt.cfg):
        raise UserError(f"recipe {opt.recipe} needs a base: --pretrained (weights to fine-tune, e.g. yolov5n.pt), "
                        "--weights (a trained base) or --cfg (a model yaml to train from scratch)")
    if opt.method not in prune.METHODS:
        raise UserError(f"--method {opt.method}: no such prune.py method (known: {', '.join(prune.METHODS)})")
    # the base trains for hours before the cut: prune.py's one line on cut flags it would refuse comes now instead
    prune.settings_from(prune.parse_opt(["--weights", "base.pt", *cut_flags(opt), "--data", opt.data]))
    return opt


def cut_flags(o: argparse.Namespace) -> list[str]:
    """prune.py's flags for the cut: the method, how much, and how it is allocated."""
    cut = ["--flops-target", f"{o.flops_target:g}"] if o.flops_target else ["--percent", f"{o.percent}"]
    return ["--method", o.method, *cut, *(["--skip-shortcut"] if o.skip_shortcut else []),
            *(["--round", str(o.round)] if o.round > 1 else []),
            *(["--allocation", o.allocation] if o.allocation != "global" else []),
            *(["--max-layer-percent", f"{o.max_layer_percent:g}"] if o.max_layer_percent < 1 else [])]


class SlimPipeline(Pipeline):
    def run(self) -> dict:
        o = self.opt
        sparse_stage = o.sparse_epochs > 0 and not o.sparse_weights
        self.plan = {**({} if o.weights else {"base": o.epochs}),
                     **({"sparse": o.sparse_epochs} if sparse_stage else {}), "prune": 0, "finetune": o.finetune_epochs,
                     **({"finetune-kd": o.finetune_epochs} if o.kd else {}), "compare": 0}
        base = o.weights or self.train_base()
        source = o.sparse_weights or (self.sparse_train(base) if sparse_stage else "")
        pruned = self.prune(source or base)
        ft = ["--weights", pruned, "--epochs", str(o.finetune_epochs), "--hyp", o.finetune_hyp, *self.noval(),
              *self.common(), "--project", str(self.dir)]
        tuned = [self.stage("finetune.py", finetune.main, [*ft, "--name", "finetune"], o.finetune_epochs)["last"]]
        if o.kd:
            tuned.append(self.stage("finetune.py", finetune.main, [*ft, "--teacher", base, "--name", "finetune-kd"],
                                    o.finetune_epochs)["last"])
        weights = [base, *([source] if source else []), pruned, *tuned]
        records = self.stage("val.py", val.main, [
            "--weights", *weights, "--data", o.data, "--imgsz", str(o.imgsz), "--workers", str(o.workers),
            "--device", o.device, "--project", str(self.dir), "--name", "compare", "--exist-ok", "--no-plots"])
        labels = ["base", *(["sparse"] if source else []), "pruned", "finetuned", *(["finetuned + KD"] if o.kd else [])]
        return self.summarise(labels, records)

    def noval(self) -> list[str]:
        return ["--noval"] if self.opt.noval else []

    def train_base(self) -> str:
        """train.py: fine-tune --pretrained, or train --cfg from scratch; its best.pt."""
        o = self.opt
        start = ["--weights", o.pretrained] if o.pretrained else ["--cfg", o.cfg, "--weights", ""]
        return self.stage("train.py", train.main, [
            *start, "--epochs", str(o.epochs), *(["--patience", str(o.patience)] if o.patience else []),
            "--optimizer", o.base_optimizer, "--hyp", o.base_hyp, *self.noval(), *self.common(), "--project",
            str(self.dir), "--name", "base"], epochs=o.epochs)["weights"]

    def sparse_train(self, base: str) -> str:
        o = self.opt
        penalty = ["--shrink", str(o.shrink)] if o.shrink is not None else ["--sr", str(o.sr)]
        penalty += ["--gamma-lr", str(o.gamma_lr)] + (["--polarize", str(o.polarize)] if o.polarize else [])
        penalty += ["--polarize-scope", o.polarize_scope] if o.polarize and o.polarize_scope != "layer" else []
        penalty += ["--teacher", base] if o.sparse_kd else []
        return self.stage("train_sparse.py", train_sparse.main, [
            "--weights", base, "--epochs", str(o.sparse_epochs), "--hyp", o.hyp, *penalty, *self.noval(),
            *(["--skip-shortcut"] if o.skip_shortcut else []), *self.common(), "--project", str(self.dir),
            "--name", "sparse"], epochs=o.sparse_epochs)["last"]

    def prune(self, weights: str) -> str:
        rec = self.stage("prune.py", prune.main, [
            "--weights", weights, *cut_flags(self.opt), *self.common(), "--project", str(self.dir), "--name", "prune"])
        return str(Path(rec["save_dir"]) / "pruned.pt")

    def summarise(self, labels: list[str], records: list[dict]) -> dict:
        base = records[0]
        rows = []
        for label, r in zip(labels, records):
            rows.append({"stage": label, **{k: r[k] for k in ("mAP50", "mAP50-95", "params", "GFLOPs", "b1_ms")
                                            if k in r}, "weights": r["weights"]})
        summary = {"recipe": self.opt.recipe, "options": vars(self.opt), "commands": self.commands, "rows": rows}
        atomic_write(self.dir / "summary.json", lambda f: json.dump(summary, f, indent=2), mode="w")
        md = ["| stage | mAP50 | mAP50-95 | params | GFLOPs | CPU b1 ms |", "|---|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['stage']} | {r['mAP50']:.3f} ({r['mAP50'] / max(base['mAP50'], 1e-9):.2f}x) | "
                      f"{r['mAP50-95']:.3f} | {r['params']:,} ({r['params'] / base['params']:.2f}x) | "
                      f"{r['GFLOPs']:.2f} ({r['GFLOPs'] / base['GFLOPs']:.2f}x) | "
                      f"{r.get('b1_ms', float('nan')):.1f} ({r.get('b1_ms', 0) / base.get('b1_ms', 1):.2f}x) |")
        text = (f"Recipe: {self.opt.recipe}\n\n" + "\n".join(md) + "\n\nCommands:\n\n"
                + "\n".join(f"    {c}" for c in self.commands) + "\n")
        atomic_write(self.dir / "summary.md", lambda f: f.write(text), mode="w")
        plot(rows, self.dir / "pipeline.png")
        LOGGER.info(f"\n{PREFIX}summary ({self.opt.recipe})\n" + "\n".join(md))
        LOGGER.info(f"{PREFIX}saved to {colorstr('bold', str(self.dir))} (summary.md, summary.json, pipeline.png)")
        return summary


def plot(rows: list[dict], path: Path) -> None:
    """mAP50 against parameters and against batch-1 latency, one point per stage."""
    from utils.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), tight_layout=True)
    for ax, key, label in ((axes[0], "params", "parameters (M)"), (axes[1], "b1_ms", "CPU batch-1 ms")):
        for r in rows:
            if key in r:
                x = r[key] / 1e6 if key == "params" else r[key]
                ax.scatter(x, r["mAP50"], s=40)
                ax.annotate(r["stage"], (x, r["mAP50"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=150)
    plt.close(fig)


@cli
def main(argv: list[str] | None = None) -> dict:
    return SlimPipeline(parse_opt(argv)).run()


if __name__ == "__main__":
    main()
