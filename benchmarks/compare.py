"""The held-out benchmark: every compression method cut from one fine-tuned base to the same GFLOPs, trained with the
same budget, evaluated side by side on the val split. One command per dataset:

    python benchmarks/compare.py --data data/bccd.yaml --weights ../shared/fixtures/yolov5n-coco.pt --name bccd
    python benchmarks/compare.py --data data/deeppcb.yaml --weights ../shared/fixtures/yolov5n-coco.pt \\
        --name deeppcb --curve 0.3 0.7        # + the two best of ours and Torch-Pruning's best at 0.3 and 0.7

The defaults are the protocol:
1. base: train.py fine-tunes --weights on --data (--imgsz 320, --batch-size 8, --hyp hyp.small, --seed 0) until the
   val mAP50-95 has not improved for --base-patience 20 epochs, at most --base-epochs 150; it ran n_base epochs.
   Its best.pt is the base of every row.
2. Every method keeps --gflops 0.5 of the base's GFLOPs and trains --budget 30 epochs after the base:
   slim: train_sparse.py --sparse-epochs 15 with --sparse-args, prune.py --method slim, finetune.py budget - 15;
   l1, taylor, eagleeye: prune.py --method m (eagleeye: --candidates 20 --calib-batches 8), finetune.py budget;
   taylor-uniform (and l1-uniform, on request): the same with --allocation uniform, every layer cut by one share
   as Torch-Pruning does, which separates the criterion from the allocation; --taylor-score weights gives both
   taylor rows prune.py's Taylor score over every parameter a channel owns instead of its BN terms;
   --max-layer-percent P caps the global ranking of slim, l1 and taylor (no layer loses more than P);
   tp-magnitude, tp-taylor: benchmarks/tp_prune.py (Torch-Pruning's pruners), finetune.py budget;
   base-ft (on request), the control: the base itself, unpruned, through finetune.py for the budget: what the
   budget's epochs are worth without a cut (above the base: the base had not converged, read the ratios against it;
   below it: the fine-tuning recipe itself costs accuracy, as on DeepPCB);
   dense: yolov5n at the width_multiple whose GFLOPs are nearest the target, train.py from scratch for
   n_base + budget epochs (--noval: every epoch runs).
   Fine-tuning is finetune.py --hyp hyp.small --noval (the final validation still runs); a method's model is its
   last.pt. --ft-hyp gives the fine-tuning stages (base-ft's too) a hyp of their own, e.g. the gentler
   hyp.finetune-small (lr0 0.002); the base, slim's sparse training and dense keep --hyp. --curve adds targets for
   the best methods (--curve-methods chooses them). --ft-seeds S ... fine-tunes every cut (and base-ft) again
   with each seed (folders finetune-s<S>): the rows gain every seed's mAP50-95 and their mean, and the table ranks
   by the mean; the base, the cuts and dense run once.
3. val.py evaluates the base and every final model in one call (P, R, mAP50, mAP50-95, params, GFLOPs), in
   upstream's rectangular batches, and once more with --square (mAP50_square, mAP50-95_square): every image
   letterboxed to imgsz x imgsz, as the fixed-shape exports of the latency stage see them, and
   benchmarks/latency.py times them at batch 1 on the CPU, PyTorch and ONNX Runtime fp32 (fixed-shape exports), in
   interleaved rounds of one run, so the ratios to the base come from the same conditions.

Every stage is one of the repo's scripts, called through its main(argv) and listed, runnable, in commands.sh. A
finished stage writes stage.json in its folder and a rerun skips it; an interrupted training stage continues from its
last.pt; a stage folder that was run with other arguments stops the run with one line (use another --name).
--base-from DIR starts a run from DIR's finished base (same base arguments), e.g. to run --methods in parallel
processes, one --name each.
Outputs in <project>/<name>/: results.json, results.md, pareto.png, base.png, commands.sh and one folder per stage.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import finetune  # noqa: E402
import latency  # noqa: E402
import prune  # noqa: E402
import tp_prune  # noqa: E402
import train  # noqa: E402
import train_sparse  # noqa: E402
import val  # noqa: E402
from models.yolo import DetectionModel, find_model_yaml  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.files import atomic_write, yaml_load  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.pruning.methods.taylor import SCORES as TAYLOR_SCORES  # noqa: E402
from utils.pruning.yaml_writer import yaml_text  # noqa: E402
from utils.stages import Pipeline, add_run_args, epochs_run  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402

PREFIX = colorstr("compare: ")
OURS = ("slim", "l1", "taylor", "taylor-uniform", "eagleeye")
TP = ("tp-magnitude", "tp-taylor")
METHODS = (*OURS, *TP, "dense")  # the default rows
CONTROL = "base-ft"  # the unpruned base fine-tuned with the budget
CHOICES = (*METHODS, "l1-uniform", CONTROL)
UNIFORM = "-uniform"  # a ranked method of prune.py with --allocation uniform
RANKED = ("slim", "l1", "taylor")  # prune.py's global ranking: --max-layer-percent caps it
EVAL = ("val", "val-square", "latency")  # the last stages
RATIO_KEYS = ("mAP50-95", "mAP50", "mAP50-95_square", "params", "GFLOPs", "ms_pt", "ms_ort")
MEAN_KEYS = ("mAP50-95_mean", "mAP50-95_square_mean")  # with --ft-seeds: the mean over every seed's fine-tuning


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset yaml with a held-out val split")
    p.add_argument("--weights", required=True, help="the pretrained model the base is fine-tuned from")
    p.add_argument("--hyp", default=str(ROOT / "data/hyps/hyp.small.yaml"), help="hyp of every training stage")
    p.add_argument("--ft-hyp", default=None, help="hyp of the fine-tuning stages (default: --hyp)")
    p.add_argument("--base-epochs", type=int, default=150, help="base: at most this many epochs")
    p.add_argument("--base-patience", type=int, default=20, help="base: stop after this many epochs without gain")
    p.add_argument("--gflops", type=float, default=0.5, help="share of the base's GFLOPs every method keeps")
    p.add_argument("--budget", type=int, default=30, help="training epochs after the base, sparse epochs included")
    p.add_argument("--sparse-epochs", type=int, default=15, help="slim: sparse-training epochs (of the budget)")
    p.add_argument("--sparse-args", default="--polarize 1.2 --gamma-lr 10 --shrink 1.0 --teacher {base}",
                   help="slim: train_sparse.py's recipe flags ({base}: the base's best.pt)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=CHOICES)
    p.add_argument("--curve", type=float, nargs="*", default=[], help="more GFLOPs shares for the best methods")
    p.add_argument("--curve-methods", nargs="+", default=None, choices=[m for m in CHOICES if m != CONTROL],
                   help="the methods cut at --curve (default: the two best of ours and Torch-Pruning's best)")
    p.add_argument("--candidates", type=int, default=20, help="eagleeye: random sub-nets")
    p.add_argument("--calib-batches", type=int, default=8, help="eagleeye's adaptive BN, taylor's gradients")
    p.add_argument("--taylor-score", default=None, choices=TAYLOR_SCORES,
                   help="taylor rows: prune.py --taylor-score (default: prune.py's own, bn)")
    p.add_argument("--max-layer-percent", type=float, default=1.0,
                   help="slim, l1, taylor rows (the global ranking): prune.py --max-layer-percent")
    p.add_argument("--dense-cfg", default="yolov5n.yaml", help="dense: the model yaml whose width_multiple is chosen")
    p.add_argument("--latency-runs", type=int, default=60, help="batch-1 runs per model and runtime")
    p.add_argument("--base-from", default="",
                   help="a compare.py folder whose finished base this run adopts (copied in, its arguments checked): "
                        "run methods in parallel processes under different --name")
    p.add_argument("--ft-seeds", type=int, nargs="*", default=[],
                   help="fine-tune every cut (and base-ft) again with each of these seeds: mean and spread per row")
    add_run_args(p, ROOT / "runs/compare", reuse=True)  # caching needs the same folder every time
    p.set_defaults(batch_size=8)
    return check_opt(p.parse_args(argv))


def check_opt(opt: argparse.Namespace) -> argparse.Namespace:
    """One line for each choice that cannot run."""
    for g in (opt.gflops, *opt.curve):
        if not 0 < g < 1:
            raise UserError(f"--gflops and --curve are shares of the base's GFLOPs in (0, 1); got {g}")
    for flag, f in (("--hyp", opt.hyp), ("--ft-hyp", opt.ft_hyp)):
        if f is not None and not Path(f).is_file():
            raise UserError(f"{flag} {f}: no such file")
    opt.ft_hyp = opt.ft_hyp or opt.hyp
    if not 0 < opt.max_layer_percent <= 1:
        raise UserError(f"--max-layer-percent must be in (0, 1]; got {opt.max_layer_percent}")
    if opt.budget < 1 or opt.base_epochs < 1 or opt.sparse_epochs < 1:
        raise UserError("--budget, --base-epochs and --sparse-epochs must be at least 1")
    slim = "slim" in opt.methods or "slim" in (opt.curve_methods or [])
    if slim and opt.budget <= opt.sparse_epochs:
        raise UserError(f"--budget {opt.budget} leaves no fine-tuning after --sparse-epochs {opt.sparse_epochs}")
    opt.methods = list(dict.fromkeys(opt.methods))
    opt.curve = [g for g in dict.fromkeys(opt.curve) if g != opt.gflops]  # the --gflops rows are there already
    opt.ft_seeds = [s for s in dict.fromkeys(opt.ft_seeds) if s != opt.seed]  # --seed is the first run of each
    return opt


def dense_width(cfg: dict, target: float, imgsz: int) -> tuple[float, float]:
    """(width_multiple, GFLOPs at imgsz) of the model whose GFLOPs are nearest `target`. GFLOPs rise with the width in
    steps (widths are rounded to multiples of 8): bisect to the step that crosses the target, take the nearer side."""
    def gflops(w: float) -> float:
        return model_flops(DetectionModel({**cfg, "width_multiple": w}), imgsz)

    lo, hi = 0.01, 1.0
    f_lo, f_hi = gflops(lo), gflops(hi)
    if f_lo >= target or f_hi <= target:
        return (lo, f_lo) if f_lo >= target else (hi, f_hi)
    for _ in range(14):
        mid = round((lo + hi) / 2, 6)
        f = gflops(mid)
        lo, f_lo, hi, f_hi = (mid, f, hi, f_hi) if f <= target else (lo, f_lo, mid, f)
    return (lo, f_lo) if target - f_lo <= f_hi - target else (hi, f_hi)


class Compare(Pipeline):
    def __init__(self, opt: argparse.Namespace):
        super().__init__(opt)
        self.base = ""  # the base's best.pt, set by run_base
        self.n_base = 0

    def train_args(self, epochs: int, hyp: str | None = None) -> list[str]:
        return [*self.data_args(), "--epochs", str(epochs), "--hyp", hyp or self.opt.hyp]

    def stages_of(self, method: str, g: float) -> dict[str, int]:
        """The stage names (and training epochs) that `method` at share g runs: the plan of the progress lines."""
        o, tag = self.opt, f"{method}-{g:g}"
        if method == "dense":
            return {tag: (self.n_base or o.base_epochs) + o.budget}
        tunes = {f"{CONTROL if method == CONTROL else tag}/{name}": self.ft_epochs(method)
                 for name in self.finetune_names()}
        if method == CONTROL:
            return tunes
        sparse = {"slim-sparse": o.sparse_epochs} if method == "slim" else {}
        return {**sparse, f"{tag}/prune": 0, **tunes}

    def ft_epochs(self, method: str) -> int:
        """Fine-tuning epochs of a cut: the budget, less slim's sparse epochs."""
        return self.opt.budget - (self.opt.sparse_epochs if method == "slim" else 0)

    def finetune_names(self) -> dict[str, int]:
        """{stage folder: seed} of every fine-tuning of one cut: 'finetune' (--seed), 'finetune-s<S>' (--ft-seeds)."""
        return {"finetune": self.opt.seed, **{f"finetune-s{s}": s for s in self.opt.ft_seeds}}

    def replan(self, methods: list[str], targets: list[float]) -> None:
        """Add the stages of `methods` at `targets` before the evaluation stages."""
        todo = {k: v for k, v in self.plan.items() if k not in EVAL}
        for g in targets:
            for m in methods:
                todo.update({k: v for k, v in self.stages_of(m, g).items() if k not in todo})
        self.plan = {**todo, **{k: 0 for k in EVAL}}

    def run_base(self) -> None:
        o = self.opt
        if o.base_from:
            self.copy_base(Path(o.base_from))
        rec = self.stage("train.py", train.main, [
            "--weights", o.weights, *self.train_args(o.base_epochs), "--patience", str(o.base_patience),
            "--project", str(self.dir), "--name", "base", *self.run_args()], epochs=o.base_epochs)
        self.base = rec["weights"]
        self.n_base = epochs_run(self.dir / "base")  # results.json counts only a resumed run's last leg
        self.plan.update({k: v for k, v in self.stages_of("dense", o.gflops).items() if k in self.plan})

    def copy_base(self, src: Path) -> None:
        """--base-from: copy src's finished base run here, without its stage.json, so the base stage adopts it (a
        finished run whose opt.yaml matches this run's base arguments) or stops with one line where they differ."""
        dst = self.dir / "base"
        if dst.exists() or src.resolve() == self.dir.resolve():
            return  # already copied (or this run's own)
        if not (src / "base" / "results.json").is_file():
            raise UserError(f"--base-from {src}: no finished base there ({src / 'base' / 'results.json'} is missing)")
        part = dst.with_name("base.partial")  # renamed when complete: an interrupted copy is never taken for a run
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(src / "base", part, ignore=shutil.ignore_patterns("stage.json"))
        part.rename(dst)
        LOGGER.info(f"{PREFIX}copied the base of {src} (--base-from)")

    def cut(self, method: str, g: float) -> tuple[str, dict[str, str]]:
        """The pruned.pt of `method` at share g, and the stages that made it ({step: stage name})."""
        o, tag = self.opt, f"{method}-{g:g}"
        src, names = self.base, {}
        if method == "slim":
            recipe = shlex.split(o.sparse_args.replace("{base}", shlex.quote(self.base)))
            src = self.stage("train_sparse.py", train_sparse.main, [
                "--weights", self.base, *self.train_args(o.sparse_epochs), *recipe, "--project", str(self.dir),
                "--name", "slim-sparse", *self.run_args()], epochs=o.sparse_epochs)["last"]
            names["sparse"] = "slim-sparse"
        common = self.data_args()
        out = ["--project", str(self.dir / tag), "--name", "prune", *self.run_args()]
        if method in TP:
            rec = self.stage("benchmarks/tp_prune.py", tp_prune.main, [
                "--weights", self.base, "--importance", method[3:], "--gflops", f"{g:g}", *common, "--calib-batches",
                str(o.calib_batches), *out])
        else:
            name = method.removesuffix(UNIFORM)
            extra = {"eagleeye": ["--candidates", str(o.candidates), "--calib-batches", str(o.calib_batches)],
                     "taylor": ["--calib-batches", str(o.calib_batches),
                                *(["--taylor-score", o.taylor_score] if o.taylor_score else [])]}.get(name, [])
            if name != method:
                extra += ["--allocation", "uniform"]
            elif name in RANKED and o.max_layer_percent < 1:
                extra += ["--max-layer-percent", f"{o.max_layer_percent:g}"]
            rec = self.stage("prune.py", prune.main, [
                "--weights", src, "--method", name, "--flops-target", f"{g:g}", *common, *extra, *out])
        return str(Path(rec["save_dir"]) / "pruned.pt"), {**names, "prune": f"{tag}/prune"}

    def method(self, method: str, g: float) -> dict:
        """Cut and train `method` at share g: {method, target_gflops, weights (final .pt), tag, fit, stages}."""
        if method == "dense":
            return self.dense(g)
        o, tag = self.opt, f"{method}-{g:g}"
        if method == CONTROL:  # no cut, no GFLOPs target
            tag, g, pruned, names = CONTROL, None, self.base, {}
        else:
            pruned, names = self.cut(method, g)
        epochs = self.ft_epochs(method)
        last = {}
        for name, seed in self.finetune_names().items():
            rec = self.stage("finetune.py", finetune.main, [
                "--weights", pruned, *self.train_args(epochs, o.ft_hyp), "--noval", "--project", str(self.dir / tag),
                "--name", name, *self.run_args(seed)], epochs=epochs)
            last[name] = rec
            names[name] = f"{tag}/{name}"
        first = last.pop("finetune")
        return {"method": method, "target_gflops": g, "weights": first["last"], "tag": tag, "fit": first["mAP50-95"],
                "repeats": [r["last"] for r in last.values()], "stages": names}

    def dense(self, g: float) -> dict:
        """yolov5n (--dense-cfg) at the width nearest g x the base's GFLOPs, trained from scratch n_base + budget."""
        o, tag = self.opt, f"dense-{g:g}"
        base = load_model(self.base)
        cfg = {**yaml_load(find_model_yaml(o.dense_cfg)), "nc": len(base.names)}
        full = model_flops(base, o.imgsz)
        w, gf = dense_width(cfg, g * full, o.imgsz)
        LOGGER.info(f"{PREFIX}dense: width_multiple {w:g} gives {gf:.4f} GFLOPs at {o.imgsz}, {gf / full:.4f} of the "
                    f"base's {full:.4f} (target {g:g})")
        f = self.dir / tag / "dense.yaml"
        text = yaml_text({**cfg, "width_multiple": w}, f"{o.dense_cfg} at width_multiple {w:g}: {gf / full:.4f} of "
                         f"the base's GFLOPs at {o.imgsz} (benchmarks/compare.py --gflops {g:g})")
        if not f.is_file() or f.read_text() != text:  # a cached stage's yaml is left as it is
            atomic_write(f, lambda fh: fh.write(text), mode="w")
        epochs = self.n_base + o.budget
        rec = self.stage("train.py", train.main, [
            "--cfg", str(f), "--weights", "", *self.train_args(epochs), "--noval", "--project", str(self.dir),
            "--name", tag, *self.run_args()], epochs=epochs)
        return {"method": "dense", "target_gflops": g, "weights": rec["last"], "tag": tag, "fit": rec["mAP50-95"],
                "stages": {"train": tag}}

    def curve_methods(self, rows: list[dict]) -> list[str]:
        """--curve-methods, else the two best of ours and Torch-Pruning's best by mAP50-95 after training."""
        if self.opt.curve_methods:
            return list(dict.fromkeys(self.opt.curve_methods))
        fit = {r["method"]: r["fit"] for r in rows}
        ours = sorted((m for m in fit if m not in (*TP, "dense", CONTROL)), key=lambda m: -fit[m])[:2]
        return ours + sorted((m for m in TP if m in fit), key=lambda m: -fit[m])[:1]

    def run(self) -> list[dict]:
        o = self.opt
        self.plan = {"base": o.base_epochs}
        self.replan(o.methods, [o.gflops])
        self.run_base()
        rows = [self.method(m, o.gflops) for m in o.methods]
        if o.curve:
            chosen = self.curve_methods(rows)
            LOGGER.info(f"{PREFIX}curve: {', '.join(chosen)} at {', '.join(f'{g:g}' for g in o.curve)}")
            self.replan(chosen, o.curve)
            rows += [self.method(m, g) for g in o.curve for m in chosen]
        return self.write(self.evaluate(rows))

    def evaluate(self, rows: list[dict]) -> list[dict]:
        """One val.py call and one latency run over the base and every final model: the rows of results.json."""
        o = self.opt
        repeats = [w for r in rows for w in r.get("repeats", [])]
        weights = [self.base, *(r["weights"] for r in rows), *repeats]
        records, square = (self.stage("val.py", val.main, [
            "--weights", *weights, *self.data_args(), *extra, "--latency-runs", "0", "--no-plots", "--project",
            str(self.dir), "--name", name, "--exist-ok", "--workers", str(o.workers), "--device", o.device],
            refresh=True) for name, extra in (("val", []), ("val-square", ["--square"])))
        times = self.stage("benchmarks/latency.py", latency.main, [
            "--weights", self.base, "--pruned", *(f"{r['tag']}={r['weights']}" for r in rows), "--data", o.data,
            "--imgsz", str(o.imgsz), "--runs", str(o.latency_runs), "--no-int8", "--backends", "pytorch", "onnxruntime",
            "--device", "cpu", "--out",
            str(self.dir / "latency")], refresh=True)
        ms = {(t["model"], t["backend"]): t["ms"] for t in times}
        base = {"method": "base", "target_gflops": None, "weights": self.base, "tag": "base",
                "stages": {"train": "base"}}
        extra = iter(zip(records[len(rows) + 1:], square[len(rows) + 1:]))  # the --ft-seeds runs, in row order
        out = []
        for r, rec, sq in zip([base, *rows], records, square):
            row = {k: r[k] for k in ("method", "target_gflops", "weights")}
            row.update({k: rec[k] for k in ("P", "R", "mAP50", "mAP50-95", "params", "GFLOPs")})
            row.update({f"{k}_square": sq[k] for k in ("mAP50", "mAP50-95")})
            row.update(ms_pt=ms[(r["tag"], "pytorch fp32")], ms_ort=ms[(r["tag"], "onnxruntime fp32")])
            row["seconds"] = {step: self.spent[name][0] for step, name in r["stages"].items()}
            if o.ft_seeds:  # every seed's reading of the row (one for the base and dense), and their mean
                runs = [(rec, sq), *(next(extra) for _ in r.get("repeats", []))]
                row["seeds"] = [o.seed, *o.ft_seeds] if r.get("repeats") else [o.seed]
                for k, v in (("mAP50-95", [a["mAP50-95"] for a, _ in runs]),
                             ("mAP50-95_square", [b["mAP50-95"] for _, b in runs])):
                    row[f"{k}_seeds"], row[f"{k}_mean"] = v, sum(v) / len(v)
            out.append(row)
        keys = [*RATIO_KEYS, *(MEAN_KEYS if o.ft_seeds else ())]
        for row in out:
            row.update({f"{k}_ratio": round(row[k] / out[0][k], 4) if out[0][k] else None for k in keys})
        return out

    def write(self, rows: list[dict]) -> list[dict]:
        o, d = self.opt, self.dir
        atomic_write(d / "results.json", lambda f: json.dump(rows, f, indent=2), mode="w")
        curve = base_curve(d / "base" / "results.csv")
        plot_base(curve, d / "base.png")
        plot_pareto(rows, d / "pareto.png")
        md = report(rows, o, self.n_base, curve)
        atomic_write(d / "results.md", lambda f: f.write(md), mode="w")
        LOGGER.info(f"\n{PREFIX}results\n{md}")
        LOGGER.info(f"{PREFIX}saved to {colorstr('bold', str(d))} (results.json, results.md, pareto.png, base.png, "
                    "commands.sh)")
        return rows


def base_curve(csv: Path) -> list[tuple[int, float]]:
    """(epoch, val mAP50-95) of the base's training, from its results.csv."""
    lines = csv.read_text().splitlines()
    head = [h.strip() for h in lines[0].split(",")]
    e, m = head.index("epoch"), head.index("metrics/mAP_0.5:0.95")
    return [(int(float(x[e])), float(x[m])) for x in (line.split(",") for line in lines[1:] if line.strip())]


def plot_base(curve: list[tuple[int, float]], path: Path) -> None:
    """The base's val mAP50-95 per epoch, its best epoch marked: did it converge?"""
    from utils.plots import plt

    fig, ax = plt.subplots(figsize=(6, 4), tight_layout=True)
    ax.plot([e for e, _ in curve], [m for _, m in curve], marker=".")
    best = max(curve, key=lambda x: x[1])
    ax.scatter([best[0]], [best[1]], color="red", zorder=3, label=f"best: epoch {best[0]}, {best[1]:.3f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95")
    ax.set_title("base fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_pareto(rows: list[dict], path: Path) -> None:
    """mAP50-95 against GFLOPs: one line per method over its targets, the base as a point."""
    from utils.plots import plt

    fig, ax = plt.subplots(figsize=(7, 5), tight_layout=True)
    for r in (r for r in rows[1:] if r["target_gflops"] is None):  # the control: the base fine-tuned again
        ax.scatter([r["GFLOPs"]], [r["mAP50-95"]], marker="x", s=80, color="gray", label=r["method"], zorder=3)
    for method in dict.fromkeys(r["method"] for r in rows[1:] if r["target_gflops"] is not None):
        pts = sorted((r["GFLOPs"], r["mAP50-95"]) for r in rows[1:] if r["method"] == method)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=method)
    ax.scatter([rows[0]["GFLOPs"]], [rows[0]["mAP50-95"]], marker="*", s=200, color="black", label="base", zorder=3)
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel("mAP50-95 (val)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _x(row: dict, key: str, fmt: str) -> str:
    r = row[f"{key}_ratio"]
    return f"{row[key]:{fmt}} ({r:.2f}x)" if r is not None else f"{row[key]:{fmt}}"


def _range(v: list[float]) -> str:
    return f", {min(v):.3f}-{max(v):.3f}" if len(v) > 1 else ""


def report(rows: list[dict], opt: argparse.Namespace, n_base: int, curve: list[tuple[int, float]]) -> str:
    """results.md: the protocol's figures in one table, mAP50-95 first, ratios to the base."""
    best = max(curve, key=lambda x: x[1])
    last = ", ".join(f"{m:.3f}" for _, m in curve[-5:])
    seeds = (f" (every fine-tuning also with seed {', '.join(map(str, opt.ft_seeds))}: the mean columns give the mean "
             "over the seeds and their range; base and dense ran once)") if opt.ft_seeds else ""
    methods = {r["method"] for r in rows}
    split = "; ".join([*([f"slim: {opt.sparse_epochs} sparse + {opt.budget - opt.sparse_epochs} fine-tuning"]
                         if "slim" in methods else []),
                       *([f"dense: {n_base + opt.budget} from scratch"] if "dense" in methods else [])])
    split = f" ({split})" if split else ""
    mean = [("mAP50-95 mean", "mAP50-95_mean"), ("mAP50-95 square mean", "mAP50-95_square_mean")] \
        if opt.ft_seeds else []
    lines = [f"Data {opt.data}, val split; base fine-tuned from {opt.weights} for n_base = {n_base} epochs (at most "
             f"{opt.base_epochs}, patience {opt.base_patience}): best val mAP50-95 {best[1]:.3f} at epoch {best[0]}, "
             f"last epochs {last} (base.png). Every method keeps {opt.gflops:g} of the base's GFLOPs"
             f"{' (and ' + ', '.join(f'{g:g}' for g in opt.curve) + ' on the curve)' if opt.curve else ''} and trains "
             f"{opt.budget} epochs after the base{split}. Hyp {Path(opt.hyp).name}, fine-tuning "
             f"{Path(opt.ft_hyp).name}. Seed {opt.seed}{seeds}, imgsz {opt.imgsz}, batch "
             f"{opt.batch_size}. Latency: CPU batch 1, medians of {opt.latency_runs} runs in interleaved rounds, "
             "fixed-shape fp32. mAP50-95 square: every image letterboxed to imgsz x imgsz (val.py --square), as the "
             "fixed-shape exports see them; the other columns use upstream's rectangular batches.", "",
             "| method | GFLOPs target | mAP50-95 | mAP50 | mAP50-95 square | "
             f"{''.join(f'{h} | ' for h, _ in mean)}P | R | params | GFLOPs | PyTorch ms | ORT ms |",
             "|---|---|---|---|---|" + "---|" * len(mean) + "---|---|---|---|---|---|"]
    rank = "mAP50-95_mean" if mean else "mAP50-95"
    order = [rows[0], *sorted(rows[1:], key=lambda r: (-(r["target_gflops"] or 1), -r[rank]))]
    for r in order:
        target = "-" if r["target_gflops"] is None else f"{r['target_gflops']:g}"
        spread = "".join(f"{_x(r, k, '.3f')}{_range(r[k.replace('_mean', '_seeds')])} | " for _, k in mean)
        lines.append(f"| {r['method']} | {target} | {_x(r, 'mAP50-95', '.3f')} | {_x(r, 'mAP50', '.3f')} | "
                     f"{_x(r, 'mAP50-95_square', '.3f')} | {spread}{r['P']:.3f} | {r['R']:.3f} | "
                     f"{_x(r, 'params', ',')} | "
                     f"{_x(r, 'GFLOPs', '.3f')} | {_x(r, 'ms_pt', '.1f')} | {_x(r, 'ms_ort', '.1f')} |")
    hours = sum(s for r in rows for s in r["seconds"].values()) / 3600
    lines += ["", f"Training and pruning took {hours:.1f} h in all (results.json: seconds per stage). Every stage's "
              "command is in commands.sh.", "", "![pareto](pareto.png) ![base](base.png)"]
    return "\n".join(lines) + "\n"


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    return Compare(parse_opt(argv)).run()


if __name__ == "__main__":
    main()
