"""Network slimming end to end: base -> sparse training -> prune -> finetune -> one comparison table.

    python benchmarks/slim_pipeline.py                  # built-in synthetic dataset, yolov5n from scratch, 320 (CPU)
    python benchmarks/slim_pipeline.py --weights trained.pt --data data/shapes.yaml --sparse-epochs 30 \\
        --sr 0.0005 --gamma-lr 100 --percent 0.5 --finetune-epochs 30 --kd    # the README's shapes rows

Each stage is the repo's own script called with the arguments printed before it (and saved in commands.sh), so any
stage can be rerun by hand. Outputs go to runs/pipeline/exp/: one folder per stage, compare/metrics.json (val.py's
table, batch-1 latency included), summary.md, summary.json and pipeline.png. --sparse-weights reuses a finished
sparse run (stages 1-2 skipped; give --weights for the base row). Each finished stage leaves stage.json in its folder:
rerun with --exist-ok (same --name) and the finished stages are skipped, an interrupted training stage resumes
(class Pipeline, which benchmarks/compare.py runs its stages with too).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finetune  # noqa: E402
import prune  # noqa: E402
import train  # noqa: E402
import train_sparse  # noqa: E402
import val  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.files import atomic_write, increment_path, yaml_load  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402

PREFIX = colorstr("pipeline: ")
STAGE_FILE = "stage.json"
RUNTIME_FLAGS = ("--workers", "--device")  # how a stage runs, not what it computes: a rerun may change them


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


def add_run_args(p: argparse.ArgumentParser, project: Path, reuse: bool = False) -> None:
    """The options every stage shares (Pipeline.common) and the output folder: for each benchmark built on Pipeline.
    reuse: always the same folder (no --exist-ok flag), where a rerun finds its finished stages."""
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default=str(project))
    p.add_argument("--name", default="exp")
    if reuse:
        p.set_defaults(exist_ok=True)
    else:
        p.add_argument("--exist-ok", action="store_true")


def flag_values(argv: list[str]) -> list[tuple[str, str | bool]]:
    """[(--flag, its value(s) joined by spaces, or True for a bare switch)] of a script's argv."""
    out: list[tuple[str, str | bool]] = []
    for a in argv:
        if a.startswith("--"):
            out.append((a, True))
        elif out:
            flag, v = out[-1]
            out[-1] = (flag, a if v is True else f"{v} {a}")
    return out


def stage_dir(argv: list[str]) -> Path:
    """The folder a stage writes: its --project/--name (or --out)."""
    a = dict(flag_values(argv))
    if "--out" in a:
        return Path(a["--out"])
    return Path(a["--project"]) / a["--name"]


def _what(argv: list[str]) -> list[tuple[str, str | bool]]:
    return [(f, v) for f, v in flag_values(argv) if f not in RUNTIME_FLAGS]


def _same(saved, given: str | bool) -> bool:
    """A value from a run's opt.yaml against one from an argv: numbers as numbers, paths as the files they name."""
    if given is True or isinstance(saved, bool):
        return saved is given
    if isinstance(saved, (int, float)):
        try:
            return float(given) == float(saved)
        except ValueError:
            return False
    saved = "" if saved is None else str(saved)
    a, b = Path(saved), Path(given)
    return saved == given or (bool(saved and given) and a.exists() and b.exists() and (
        a.resolve() == b.resolve() or (a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False))))


def check_saved_opt(d: Path, argv: list[str]) -> None:
    """A training run found in d without a stage.json (started by hand, or killed) must be the run argv describes."""
    saved = yaml_load(d / "opt.yaml")
    for flag, given in _what(argv):
        key = flag[2:].replace("-", "_")
        if key in ("project", "name", "exist_ok") or (key in ("weights", "cfg") and saved.get("resume")):
            continue  # where it is, not what it is; a resumed run saves its last.pt as --weights and --cfg ''

        if key == "hyp":  # opt.yaml keeps no hyp: hyp.yaml has its values
            same = yaml_load(d / "hyp.yaml") == yaml_load(given)
        else:
            same = _same(saved.get(key), given)
        if not same:
            raise UserError(f"{d} holds a training run with {flag} {saved.get(key)!r}, not {given!r}: use another "
                            "--name")


def epochs_run(d: Path) -> int:
    """Epochs a training run in d logged (results.csv rows): what it ran, across resumes."""
    csv = d / "results.csv"
    return max(len(csv.read_text().splitlines()) - 1, 0) if csv.is_file() else 0


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_stage(d: Path, main: Callable, argv: list[str]) -> tuple[object, float]:
    """Run one stage (resuming or adopting a training run found in d); return its record and seconds."""
    t0 = time.time()
    if (d / "opt.yaml").is_file():  # a training run was started here and its stage did not finish
        check_saved_opt(d, argv)
        last = d / "weights" / "last.pt"
        if last.is_file() and load_checkpoint(last).get("optimizer") is not None:
            before = max(last.stat().st_mtime - (d / "opt.yaml").stat().st_mtime, 0)  # its time so far, roughly
            runtime = [x for f, v in flag_values(argv) if f in RUNTIME_FLAGS for x in (f, v)]
            LOGGER.info(f"{PREFIX}resuming the interrupted run: {shlex.join(['--resume', str(last), *runtime])}")
            return main(["--resume", str(last), *runtime]), before + time.time() - t0
        if (d / "results.json").is_file():
            LOGGER.info(f"{PREFIX}adopting the finished run in {d} (its opt.yaml matches)")
            rec = json.loads((d / "results.json").read_text())
            return rec, rec.get("hours", 0.0) * 3600
        (d / "results.csv").unlink(missing_ok=True)  # a run that saved no checkpoint starts over: no stale rows
    return main(argv), time.time() - t0


class Pipeline:
    """Runs stages through the repo's scripts' main(argv), lists them in commands.sh and caches them.

    A stage's folder is its argv's --project/--name. When a stage ends it writes <folder>/stage.json (its argv, its
    returned record, wall seconds); a rerun with the same argv (--workers and --device aside) skips it, and one with
    other arguments stops with one line. A training stage that was interrupted (weights/last.pt still holds an
    optimizer) is resumed with --resume; a finished one without a stage.json is adopted. Both are first checked
    against the run's opt.yaml. `plan` (stage name -> training epochs) gives the [k/N] and the ETA."""

    def __init__(self, opt: argparse.Namespace):
        self.opt = opt
        self.dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
        self.commands: list[str] = []
        self.plan: dict[str, int] = {}
        self.spent: dict[str, tuple[float, int]] = {}  # finished stages: seconds, training epochs
        self.t0 = time.time()

    def common(self) -> list[str]:
        o = self.opt
        return ["--data", o.data, "--imgsz", str(o.imgsz), "--batch-size", str(o.batch_size), "--workers",
                str(o.workers), "--device", o.device, "--seed", str(o.seed), "--exist-ok"]

    def name_of(self, d: Path) -> str:
        return str(d.relative_to(self.dir)) if d.is_relative_to(self.dir) else str(d)

    def stage(self, script: str, main: Callable, argv: list[str], epochs: int = 0, refresh: bool = False):
        """Run (or skip) one stage; `epochs`: its training epochs, for the ETA. refresh: an evaluation stage whose
        inputs may change between runs (more models) is rerun instead of stopping the pipeline."""
        d = stage_dir(argv)
        name = self.name_of(d)
        self.plan.setdefault(name, epochs)
        command = f"python {script} {shlex.join(argv)}"
        if command not in self.commands:  # a stage several others start from (slim's sparse training) is listed once
            self.commands.append(command)
            atomic_write(self.dir / "commands.sh", lambda f: f.write("\n".join(self.commands) + "\n"), mode="w")
        LOGGER.info(f"\n{PREFIX}{self.progress(name)}")
        done = self.cached(d, argv, refresh)
        if done is not None:
            LOGGER.info(f"{PREFIX}cached: {name} ({d / STAGE_FILE})")
        else:
            LOGGER.info(f"{PREFIX}{command}")
            rec, seconds = run_stage(d, main, argv)
            done = {"script": script, "argv": argv, "record": json.loads(json.dumps(rec, default=str)),
                    "seconds": round(seconds, 2)}
            atomic_write(d / STAGE_FILE, lambda f: json.dump(done, f, indent=2), mode="w")
        self.spent[name] = (done["seconds"], epochs_run(d) if epochs else 0)
        return done["record"]  # the same (JSON) form whether run now or cached

    def cached(self, d: Path, argv: list[str], refresh: bool) -> dict | None:
        f = d / STAGE_FILE
        if not f.is_file():
            return None
        done = json.loads(f.read_text())
        old, new = dict(_what(done["argv"])), dict(_what(argv))
        if old == new:
            return done
        if refresh:
            LOGGER.info(f"{PREFIX}{self.name_of(d)}: its arguments changed, running it again")
            return None
        diff = next((k, old.get(k), new.get(k)) for k in [*new, *old] if old.get(k) != new.get(k))
        raise UserError(f"{d} was run with other arguments ({diff[0]} {diff[1]!r}, now {diff[2]!r}): use another "
                        "--name")

    def progress(self, name: str) -> str:
        """'[k/N] name ... elapsed, ETA' from the seconds per training epoch (and per other stage) measured so far."""
        train_s = sum(s for s, e in self.spent.values() if e)
        train_e = sum(e for _, e in self.spent.values())
        other = [s for s, e in self.spent.values() if not e]
        left = [e for n, e in self.plan.items() if n not in self.spent]
        eta = "ETA once a training stage has run"
        if train_e:
            per_other = sum(other) / len(other) if other else 0.0
            eta = f"ETA {_clock(sum(e * train_s / train_e if e else per_other for e in left))}"
        k = list(self.plan).index(name) + 1
        return f"[{k}/{len(self.plan)}] {name} ... {_clock(time.time() - self.t0)} elapsed, {eta}"

    def run(self) -> dict:
        o, d = self.opt, self.dir
        base = o.weights
        trained = {} if o.sparse_weights else {**({} if base else {"base": o.epochs}), "sparse": o.sparse_epochs}
        self.plan = {**trained, "prune": 0, "finetune": o.finetune_epochs,
                     **({"finetune-kd": o.finetune_epochs} if o.kd else {}), "compare": 0}
        if o.sparse_weights:
            sparse = o.sparse_weights
            if not base:
                raise UserError("--sparse-weights needs --weights (the base model of the comparison)")
        else:
            if not base:
                rec = self.stage("train.py", train.main, [
                    "--cfg", o.cfg, "--weights", "", "--epochs", str(o.epochs), "--optimizer", "AdamW", "--hyp",
                    o.base_hyp, *self.common(), "--project", str(d), "--name", "base"], epochs=o.epochs)
                base = rec["weights"]  # best.pt
            penalty = ["--shrink", str(o.shrink)] if o.shrink is not None else ["--sr", str(o.sr)]
            penalty += ["--gamma-lr", str(o.gamma_lr)] + (["--polarize", str(o.polarize)] if o.polarize else [])
            penalty += ["--polarize-scope", o.polarize_scope] if o.polarize and o.polarize_scope != "layer" else []
            penalty += ["--teacher", base] if o.sparse_kd else []
            rec = self.stage("train_sparse.py", train_sparse.main, [
                "--weights", base, "--epochs", str(o.sparse_epochs), "--hyp", o.hyp, *penalty,
                *(["--skip-shortcut"] if o.skip_shortcut else []), *self.common(), "--project", str(d),
                "--name", "sparse"], epochs=o.sparse_epochs)
            sparse = rec["last"]
        rec = self.stage("prune.py", prune.main, [
            "--weights", sparse, "--percent", str(o.percent), *(["--skip-shortcut"] if o.skip_shortcut else []),
            *(["--round", str(o.round)] if o.round > 1 else []),
            "--data", o.data, "--imgsz", str(o.imgsz), "--workers", str(o.workers), "--device", o.device,
            "--project", str(d), "--name", "prune", "--exist-ok"])
        pruned = str(Path(rec["save_dir"]) / "pruned.pt")
        ft_args = ["--weights", pruned, "--epochs", str(o.finetune_epochs), "--hyp", o.finetune_hyp, *self.common(),
                   "--project", str(d)]
        tuned = [self.stage("finetune.py", finetune.main, [*ft_args, "--name", "finetune"], o.finetune_epochs)["last"]]
        if o.kd:
            tuned.append(self.stage("finetune.py", finetune.main,
                                    [*ft_args, "--teacher", base, "--name", "finetune-kd"], o.finetune_epochs)["last"])
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
