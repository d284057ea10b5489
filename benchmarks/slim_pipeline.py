"""Network slimming end to end: base -> sparse training -> prune -> finetune -> one comparison table.

    python benchmarks/slim_pipeline.py                  # built-in synthetic dataset, yolov5n from scratch, 320 (CPU)
    python benchmarks/slim_pipeline.py --weights trained.pt --data data/shapes.yaml --sparse-epochs 30 \\
        --sr 0.0005 --gamma-lr 100 --percent 0.5 --finetune-epochs 30 --kd    # the README's shapes rows

Each stage is the repo's own script called with the arguments printed before it (and saved in commands.sh), so any
stage can be rerun by hand. Outputs go to runs/pipeline/exp/: one folder per stage, compare/metrics.json (val.py's
table, batch-1 latency included), summary.md, summary.json and pipeline.png. --sparse-weights reuses a finished
sparse run (stages 1-2 skipped; give --weights for the base row).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finetune  # noqa: E402
import prune  # noqa: E402
import train  # noqa: E402
import train_sparse  # noqa: E402
import val  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.files import atomic_write, increment_path  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402

PREFIX = colorstr("pipeline: ")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synthetic.yaml", help="dataset yaml")
    p.add_argument("--cfg", default="yolov5n.yaml", help="model yaml for the base model when --weights is not given")
    p.add_argument("--weights", default="", help="a trained base model (skips base training)")
    p.add_argument("--sparse-weights", default="", help="a finished sparse model (skips stages 1-2)")
    p.add_argument("--epochs", type=int, default=20, help="base training epochs (from scratch)")
    p.add_argument("--base-hyp", default="data/hyps/hyp.scratch-short.yaml", help="hyp of base training (AdamW)")
    p.add_argument("--hyp", default="data/hyps/hyp.small.yaml", help="hyp of sparse training")
    p.add_argument("--sparse-epochs", type=int, default=10)
    p.add_argument("--sr", type=float, default=0.0005, help="L1 strength (ignored with --shrink)")
    p.add_argument("--gamma-lr", type=float, default=100.0, help="train_sparse.py --gamma-lr")
    p.add_argument("--shrink", type=float, default=None, help="derive sr from how far the penalty can move a gamma")
    p.add_argument("--polarize", type=float, default=0.0, help="train_sparse.py --polarize (0: plain L1)")
    p.add_argument("--polarize-scope", choices=("layer", "global"), default="layer",
                   help="train_sparse.py --polarize-scope")
    p.add_argument("--sparse-kd", action="store_true",
                   help="sparse-train with the base model as teacher (train_sparse.py --teacher)")
    p.add_argument("--percent", type=float, default=0.5, help="prune.py --percent")
    p.add_argument("--round", type=int, default=1, help="prune.py --round (16 for fast ONNX Runtime CPU kernels)")
    p.add_argument("--skip-shortcut", action="store_true", help="sparse-train and prune without residual groups")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--finetune-hyp", default="data/hyps/hyp.small.yaml", help="hyp of fine-tuning")
    p.add_argument("--kd", action="store_true", help="also finetune with the base model as teacher, for comparison")
    add_run_args(p, ROOT / "runs/pipeline")
    return p.parse_args(argv)


def add_run_args(p: argparse.ArgumentParser, project: Path) -> None:
    """The options every stage shares (Pipeline.common) and the output folder: for each benchmark built on Pipeline."""
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default=str(project))
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")


class Pipeline:
    def __init__(self, opt: argparse.Namespace):
        self.opt = opt
        self.dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
        self.commands: list[str] = []

    def common(self) -> list[str]:
        o = self.opt
        return ["--data", o.data, "--imgsz", str(o.imgsz), "--batch-size", str(o.batch_size), "--workers",
                str(o.workers), "--device", o.device, "--seed", str(o.seed), "--exist-ok"]

    def stage(self, script: str, main, argv: list[str]):
        self.commands.append(f"python {script} {shlex.join(argv)}")
        atomic_write(self.dir / "commands.sh", lambda f: f.write("\n".join(self.commands) + "\n"), mode="w")
        LOGGER.info(f"\n{PREFIX}{self.commands[-1]}")
        return main(argv)

    def run(self) -> dict:
        o, d = self.opt, self.dir
        base = o.weights
        if o.sparse_weights:
            sparse = o.sparse_weights
            if not base:
                raise UserError("--sparse-weights needs --weights (the base model of the comparison)")
        else:
            if not base:
                rec = self.stage("train.py", train.main, [
                    "--cfg", o.cfg, "--weights", "", "--epochs", str(o.epochs), "--optimizer", "AdamW", "--hyp",
                    o.base_hyp, *self.common(), "--project", str(d), "--name", "base"])
                base = rec["weights"]  # best.pt
            penalty = ["--shrink", str(o.shrink)] if o.shrink is not None else ["--sr", str(o.sr)]
            penalty += ["--gamma-lr", str(o.gamma_lr)] + (["--polarize", str(o.polarize)] if o.polarize else [])
            penalty += ["--polarize-scope", o.polarize_scope] if o.polarize and o.polarize_scope != "layer" else []
            penalty += ["--teacher", base] if o.sparse_kd else []
            rec = self.stage("train_sparse.py", train_sparse.main, [
                "--weights", base, "--epochs", str(o.sparse_epochs), "--hyp", o.hyp, *penalty,
                *(["--skip-shortcut"] if o.skip_shortcut else []), *self.common(), "--project", str(d),
                "--name", "sparse"])
            sparse = rec["last"]
        rec = self.stage("prune.py", prune.main, [
            "--weights", sparse, "--percent", str(o.percent), *(["--skip-shortcut"] if o.skip_shortcut else []),
            *(["--round", str(o.round)] if o.round > 1 else []),
            "--data", o.data, "--imgsz", str(o.imgsz), "--workers", str(o.workers), "--device", o.device,
            "--project", str(d), "--name", "prune", "--exist-ok"])
        pruned = str(Path(rec["save_dir"]) / "pruned.pt")
        ft_args = ["--weights", pruned, "--epochs", str(o.finetune_epochs), "--hyp", o.finetune_hyp, *self.common(),
                   "--project", str(d)]
        tuned = [self.stage("finetune.py", finetune.main, [*ft_args, "--name", "finetune"])["last"]]
        if o.kd:
            tuned.append(self.stage("finetune.py", finetune.main,
                                    [*ft_args, "--teacher", base, "--name", "finetune-kd"])["last"])
        weights = [base, sparse, pruned, *tuned]
        records = self.stage("val.py", val.main, [
            "--weights", *weights, "--data", o.data, "--imgsz", str(o.imgsz), "--workers", str(o.workers),
            "--device", o.device, "--project", str(d), "--name", "compare", "--exist-ok", "--no-plots"])
        labels = ["base", "sparse", "pruned", "finetuned", *(["finetuned + KD"] if o.kd else [])]
        return self.summarise(labels, records)

    def summarise(self, labels: list[str], records: list[dict]) -> dict:
        base = records[0]
        rows = []
        for label, r in zip(labels, records):
            rows.append({"stage": label, **{k: r[k] for k in ("mAP50", "mAP50-95", "params", "GFLOPs", "b1_ms")
                                            if k in r}, "weights": r["weights"]})
        summary = {"options": vars(self.opt), "commands": self.commands, "rows": rows}
        atomic_write(self.dir / "summary.json", lambda f: json.dump(summary, f, indent=2), mode="w")
        md = ["| stage | mAP50 | mAP50-95 | params | GFLOPs | CPU b1 ms |", "|---|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['stage']} | {r['mAP50']:.3f} ({r['mAP50'] / max(base['mAP50'], 1e-9):.2f}x) | "
                      f"{r['mAP50-95']:.3f} | {r['params']:,} ({r['params'] / base['params']:.2f}x) | "
                      f"{r['GFLOPs']:.2f} ({r['GFLOPs'] / base['GFLOPs']:.2f}x) | "
                      f"{r.get('b1_ms', float('nan')):.1f} ({r.get('b1_ms', 0) / base.get('b1_ms', 1):.2f}x) |")
        text = "\n".join(md) + "\n\nCommands:\n\n" + "\n".join(f"    {c}" for c in self.commands) + "\n"
        atomic_write(self.dir / "summary.md", lambda f: f.write(text), mode="w")
        plot(rows, self.dir / "pipeline.png")
        LOGGER.info(f"\n{PREFIX}summary\n" + "\n".join(md))
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
    return Pipeline(parse_opt(argv)).run()


if __name__ == "__main__":
    main()
