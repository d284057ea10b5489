"""Stages of a pipeline: each one of the repo's scripts called through its main(argv), cached, resumed and timed.

slim.py (the slimming pipeline) and benchmarks/compare.py (the held-out benchmark) are built on Pipeline: a stage's
folder is its argv's --project/--name; when a stage ends it writes stage.json there, and a rerun with the same argv
skips it. Nothing here imports a script: the caller passes the script's main.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shlex
import time
from pathlib import Path
from typing import Callable

from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.files import atomic_write, increment_path, yaml_load
from utils.log import LOGGER, colorstr

PREFIX = colorstr("pipeline: ")
STAGE_FILE = "stage.json"
RUNTIME_FLAGS = ("--workers", "--device")  # how a stage runs, not what it computes: a rerun may change them


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


def _moved_to(rec: dict, d: Path) -> dict:
    """A finished run's record with the paths inside the run rebased onto d: a run copied from another folder (another
    --name adopting the same base) must point at its own files, not at the ones it was written beside."""
    w = rec.get("weights")
    if not isinstance(w, str) or Path(w).parent.name != "weights" or Path(w).parent.parent == d:
        return rec  # not a training record, or adopted where it was written
    old = Path(w).parent.parent  # <run>/weights/best.pt
    return {k: str(d / Path(v).relative_to(old)) if isinstance(v, str) and Path(v).is_relative_to(old) else v
            for k, v in rec.items()}


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
            rec = _moved_to(json.loads((d / "results.json").read_text()), d)
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

    def data_args(self) -> list[str]:
        """What every stage reads the data with: --data, --imgsz, --batch-size."""
        o = self.opt
        return ["--data", o.data, "--imgsz", str(o.imgsz), "--batch-size", str(o.batch_size)]

    def run_args(self, seed: int | None = None) -> list[str]:
        """How every stage runs: --seed (default: the run's), --exist-ok, --workers, --device."""
        o = self.opt
        return ["--seed", str(o.seed if seed is None else seed), "--exist-ok", "--workers", str(o.workers), "--device",
                o.device]

    def common(self) -> list[str]:
        return [*self.data_args(), *self.run_args()]

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
