"""Every pruning method at the same FLOPs target, from the same base model: one table.

    python benchmarks/methods.py --weights ../shared/fixtures/upstream-yolov5n-shapes.pt --data data/shapes.yaml \\
        --imgsz 320 --flops-target 0.6 --finetune-epochs 10
    python benchmarks/methods.py --weights base.pt --sparse-weights sparse.pt ...   # slim from a sparse-trained model

    python benchmarks/methods.py --weights yolov5n.pt --data data/coco128.yaml --imgsz 640 --match-slim-percent 0.5 \\
        --methods slim l1 taylor sensitivity --finetune-epochs 0      # pruning without sparse training, right after

Rows: slim (|gamma|; from --sparse-weights when given, else from the base model: slimming without sparse training),
l1 (filter norms), taylor (first-order loss change over --calib-batches batches), eagleeye (best of --candidates
random sub-nets after adaptive BN), sensitivity (per-layer ratios from each layer's own curve over --ratios),
layer+slim (--layers residual bottlenecks, then slim to the target) and unstructured (the same share of conv weights
zeroed as the FLOPs cut: its FLOPs do not fall). --match-slim-percent P sets the FLOPs target to what
`prune.py --percent P` leaves of --weights (the FLOPs of slimming by that percent). Each is pruned by prune.py
(evaluated right after), fine-tuned by finetune.py, and all of them are compared by one val.py call with batch-1 CPU
latency. --sensitivity-csv reuses a `prune.py --sensitivity` analysis of --weights (it costs layers x ratios
evaluations). Outputs: runs/benchmarks/methods/exp/{summary.md, summary.json, commands.sh} and each stage's own folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import finetune  # noqa: E402
import prune  # noqa: E402
import val  # noqa: E402
from slim_pipeline import Pipeline, add_run_args  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.files import atomic_write  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402

PREFIX = colorstr("methods: ")
ALL = ("slim", "l1", "taylor", "eagleeye", "sensitivity", "layer+slim", "unstructured")
DEFAULT = ("slim", "l1", "eagleeye", "layer+slim", "unstructured")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="the trained base model")
    p.add_argument("--sparse-weights", default="", help="a sparse-trained copy of it for the slim row")
    p.add_argument("--data", default="data/synthetic.yaml", help="dataset yaml")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT), choices=ALL)
    p.add_argument("--flops-target", type=float, default=0.6, help="share of the base GFLOPs every method keeps")
    p.add_argument("--match-slim-percent", type=float, default=0.0,
                   help="instead of --flops-target: the GFLOPs share that slim --percent P leaves of --weights")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="sensitivity: ratios tried")
    p.add_argument("--sensitivity-csv", default="",
                   help="sensitivity: reuse a saved prune.py --sensitivity analysis of --weights (checked by prune.py)")
    p.add_argument("--layers", type=int, default=2, help="layer+slim: bottlenecks removed before slimming")
    p.add_argument("--candidates", type=int, default=10, help="eagleeye candidates")
    p.add_argument("--calib-batches", type=int, default=4, help="eagleeye, sensitivity: adaptive-BN batches; taylor")
    p.add_argument("--finetune-epochs", type=int, default=10, help="0: right after pruning only")
    p.add_argument("--finetune-hyp", default="data/hyps/hyp.small.yaml")
    add_run_args(p, ROOT / "runs/benchmarks/methods")
    opt = p.parse_args(argv)
    if opt.match_slim_percent:
        opt.flops_target = slim_flops_share(opt.weights, opt.match_slim_percent, opt.imgsz)
    if not 0 < opt.flops_target < 1:
        raise UserError(f"--flops-target must be in (0, 1), the share of GFLOPs to keep; got {opt.flops_target}")
    return opt


def slim_flops_share(weights: str, percent: float, imgsz: int) -> float:
    """The share of GFLOPs that slimming `weights` by `percent` keeps (no data needed)."""
    from utils.checkpoint import load_model
    from utils.pruning.pruner import PruneSettings, prune_model
    from utils.torch_utils import model_flops

    model = load_model(weights).float().eval()
    try:
        pruned = prune_model(model, PruneSettings(percent=percent, imgsz=imgsz)).model
    except ValueError as e:
        raise UserError(f"--match-slim-percent: {e}") from None
    share = model_flops(pruned, imgsz) / model_flops(model, imgsz)
    LOGGER.info(f"{PREFIX}slim --percent {percent:g} keeps {share:.4f} of the GFLOPs: the target of every row")
    return round(share, 4)


class Methods(Pipeline):
    def method_args(self, method: str) -> list[str]:
        o = self.opt
        if method == "unstructured":
            return ["--weights", o.weights, "--method", method, "--percent", f"{1 - o.flops_target:g}"]
        w = o.sparse_weights if method == "slim" and o.sparse_weights else o.weights
        args = ["--weights", w, "--method", method, "--flops-target", str(o.flops_target)]
        if method == "eagleeye":
            args += ["--candidates", str(o.candidates), "--calib-batches", str(o.calib_batches), "--seed", str(o.seed)]
        if method in ("taylor", "sensitivity"):
            args += ["--calib-batches", str(o.calib_batches), "--seed", str(o.seed)]
        if method == "sensitivity":
            args += ["--ratios", *map(str, o.ratios)]
            args += ["--sensitivity-csv", o.sensitivity_csv] if o.sensitivity_csv else []
        return args + (["--layers", str(o.layers)] if method.startswith("layer") else [])

    def run(self) -> dict:
        o, d = self.opt, self.dir
        rows, final = [], [o.weights]
        for method in o.methods:
            name = method.replace("+", "-")
            rec = self.stage("prune.py", prune.main, [
                *self.method_args(method), "--data", o.data, "--imgsz", str(o.imgsz), "--batch-size",
                str(o.batch_size), "--workers", str(o.workers), "--device", o.device, "--project", str(d),
                "--name", f"prune-{name}", "--exist-ok"])
            pruned = str(Path(rec["save_dir"]) / "pruned.pt")
            row = {"method": method, "params": rec["after"]["params"], "GFLOPs": rec["after"]["GFLOPs"],
                   "zero_share": rec["after"]["zero_share"], "after": rec["after"]["eval"],
                   "before": rec["before"]["eval"], "pruned": pruned}
            if o.finetune_epochs > 0:
                ft = self.stage("finetune.py", finetune.main, [
                    "--weights", pruned, "--epochs", str(o.finetune_epochs), "--hyp", o.finetune_hyp,
                    *self.common(), "--project", str(d), "--name", f"finetune-{name}"])
                row["finetuned_weights"] = ft["last"]
            final.append(row.get("finetuned_weights", pruned))
            rows.append(row)
        records = self.stage("val.py", val.main, [
            "--weights", *final, "--data", o.data, "--imgsz", str(o.imgsz), "--workers", str(o.workers),
            "--device", o.device, "--project", str(d), "--name", "compare", "--exist-ok", "--no-plots"])
        base = records[0]
        for row, r in zip(rows, records[1:]):
            row["b1_ms"] = r.get("b1_ms")
            if o.finetune_epochs > 0:
                row["finetuned"] = {k: r[k] for k in ("mAP50", "mAP50-95")}
        return self.write(base, rows)

    def write(self, base: dict, rows: list[dict]) -> dict:
        o = self.opt
        summary = {"options": vars(o), "commands": self.commands, "base": base, "rows": rows}
        atomic_write(self.dir / "summary.json", lambda f: json.dump(summary, f, indent=2, default=str), mode="w")
        ft = o.finetune_epochs > 0
        match = f" (what slim --percent {o.match_slim_percent:g} keeps)" if o.match_slim_percent else ""
        md = [f"FLOPs target {o.flops_target:g}{match} of the base ({base['GFLOPs']:.2f} GFLOPs at {o.imgsz}); "
              f"base mAP50 {base['mAP50']:.3f}, mAP50-95 {base['mAP50-95']:.3f}, {base['params']:,} parameters, "
              f"batch-1 CPU {base.get('b1_ms', float('nan')):.1f} ms.", "",
              "| method | params | GFLOPs | mAP50 / 50-95 right after | "
              + (f"mAP50 / 50-95 after {o.finetune_epochs} ep finetune | " if ft else "") + "CPU b1 ms |",
              "|---|---|---|---|" + ("---|" if ft else "") + "---|"]
        for r in rows:
            a, f = r["after"], r.get("finetuned")
            zeros = f", {r['zero_share']:.0%} zeros" if r["method"] == "unstructured" else ""
            tuned = f"{f['mAP50']:.3f} / {f['mAP50-95']:.3f} | " if f else ""
            md.append(f"| {r['method']} | {r['params']:,} ({r['params'] / base['params']:.2f}x{zeros}) | "
                      f"{r['GFLOPs']:.2f} ({r['GFLOPs'] / base['GFLOPs']:.2f}x) | {a['mAP50']:.3f} / "
                      f"{a['mAP50-95']:.3f} | {tuned}{r.get('b1_ms') or float('nan'):.1f} |")
        text = "\n".join(md) + "\n\nCommands:\n\n" + "\n".join(f"    {c}" for c in self.commands) + "\n"
        atomic_write(self.dir / "summary.md", lambda f: f.write(text), mode="w")
        LOGGER.info(f"\n{PREFIX}summary\n" + "\n".join(md))
        LOGGER.info(f"{PREFIX}saved to {colorstr('bold', str(self.dir))} (summary.md, summary.json)")
        return summary


@cli
def main(argv: list[str] | None = None) -> dict:
    return Methods(parse_opt(argv)).run()


if __name__ == "__main__":
    main()
