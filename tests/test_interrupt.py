"""Interrupted runs and reproducibility: Ctrl-C and SIGKILL during training and during prune.py leave the previous
outputs whole (and resumable), a resumed run draws the batches and reaches the weights of an uninterrupted one, and the
same seed gives the same pruning."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prune
import train
from conftest import ROOT, make_dataset
from helpers import hyp_file, read_csv, save_model, spread_gammas, tiny_args, wait_for
from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, load_model
from utils.engine import Hook

pytestmark = pytest.mark.usefixtures("one_thread")


def _ctrl_c_as_in_a_terminal():
    """A suite started in the background (`nohup pytest &`) hands its children SIGINT ignored; Ctrl-C is what a
    terminal sends, so give the child the default disposition and let Python install its own handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_training_keeps_last_pt_and_resume_finishes(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    args = tiny_args(tmp_path, data, "--hyp", str(hyp_file(tmp_path, nbs=4)), "--noplots", epochs=4)
    weights = tmp_path / "runs/exp/weights"
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    wait_for(weights / "last.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "Interrupted"
    ckpt = load_checkpoint(weights / "last.pt")
    assert ckpt["epoch"] in (0, 1, 2) and ckpt["optimizer"] is not None
    assert not [p.name for p in weights.iterdir() if p.name.startswith(".")]  # no temp file left by a cut save
    rows = read_csv(tmp_path / "runs/exp/results.csv")
    assert [int(r["epoch"]) for r in rows][: ckpt["epoch"] + 1] == list(range(ckpt["epoch"] + 1))

    rec = train.run(train.parse_opt(["--resume", str(weights / "last.pt"), "--workers", "0"]))
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "runs/exp/results.csv")] == [0, 1, 2, 3]
    assert rec["epochs"] == 3 - ckpt["epoch"] and load_checkpoint(weights / "last.pt")["epoch"] == -1


class BatchLog(Hook):
    """Records every training batch (its files and a digest of its augmented pixels) per epoch through the loader's
    collate_fn, since hooks see the images but not their paths; keeps the weights after each epoch. `fp16_after`: at
    the end of that epoch, round the model and EMA to fp16 as a checkpoint stores them. `stop_in`: raise
    KeyboardInterrupt (what Ctrl-C raises) after that epoch's first optimizer step."""

    def __init__(self, fp16_after: int = -1, stop_in: int = -1):
        self.fp16_after, self.stop_in = fp16_after, stop_in
        self.batches: dict[int, list] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_start(self, state):
        collate = state.loader.collate_fn

        def record(batch):
            imgs, targets, paths, shapes = collate(batch)
            digest = hashlib.sha1(imgs.numpy().tobytes()).hexdigest()
            self.batches.setdefault(state.epoch, []).append((paths, digest))
            return imgs, targets, paths, shapes

        state.loader.collate_fn = record  # read by the next iter(loader), i.e. the first epoch's

    def after_step(self, state):
        if state.epoch == self.stop_in:
            raise KeyboardInterrupt

    def on_epoch_end(self, state):
        if state.epoch == self.fp16_after:
            with torch.no_grad():
                for m in (state.bare, state.ema.ema):
                    for t in (*m.parameters(), *m.buffers()):
                        if t.is_floating_point():
                            t.copy_(t.half())  # in place: the loss holds the anchors buffer itself
        self.weights = {k: v.clone() for k, v in state.bare.state_dict().items()}


def test_resumed_run_draws_the_same_batches_and_ends_with_the_same_weights(tmp_path):
    """Stopped partway through epoch 1 and resumed from the epoch-0 last.pt, a run sees the batches an uninterrupted
    run with the same seed sees (files and augmented pixels, mosaics included) and ends with the same weights, bit for
    bit. Not bit-exact with a plain uninterrupted run: last.pt holds the model and EMA in fp16, so the resumed run
    starts from rounded weights; the reference therefore rounds its own to fp16 where that checkpoint is written, and
    every other difference (optimizer state, schedule, EMA updates, data order and augmentation) shows up."""
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    args = tiny_args(tmp_path, data, "--hyp", str(hyp_file(tmp_path, nbs=4)), "--noplots", "--noval", epochs=3)
    ref, cut, resumed = BatchLog(fp16_after=0), BatchLog(stop_in=1), BatchLog()
    train.run(train.parse_opt([*args, "--name", "ref"]), [ref])
    with pytest.raises(KeyboardInterrupt):
        train.run(train.parse_opt([*args, "--name", "cut"]), [cut])
    last = tmp_path / "runs/cut/weights/last.pt"
    assert load_checkpoint(last)["epoch"] == 0
    train.run(train.parse_opt(["--resume", str(last), "--workers", "0"]), [resumed])

    assert sorted(ref.batches) == [0, 1, 2] and all(len(b) == 2 for b in ref.batches.values())
    assert len({p for b in ref.batches.values() for x in b for p in x[0]}) == 8
    assert ref.batches[1] != ref.batches[2]  # shuffled and augmented anew each epoch, so equality below means something
    assert cut.batches[0] == ref.batches[0] and cut.batches[1] == ref.batches[1][:1]
    assert sorted(resumed.batches) == [1, 2]
    assert resumed.batches[1] == ref.batches[1] and resumed.batches[2] == ref.batches[2]
    assert ref.weights.keys() == resumed.weights.keys()
    assert [k for k in ref.weights if not torch.equal(ref.weights[k], resumed.weights[k])] == []
    a, b = (load_model(tmp_path / f"runs/{n}/weights/last.pt").state_dict() for n in ("ref", "cut"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # the final EMA, as saved


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(spread_gammas(DetectionModel("yolov5n.yaml", nc=3)), tmp_path_factory.mktemp("w") / "model.pt")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


DIE_WHILE_SAVING = """
import os, signal, sys
sys.path.insert(0, {root!r})
import prune

def dying_save(ckpt, path):  # the new pruned.yaml, plots and half a pruned.pt are written when the signal comes
    with open(path, "wb") as f:
        f.write(b"half a checkpoint" * 1000)
    os.kill(os.getpid(), signal.{sig})
    import time; time.sleep(5)

prune.save_checkpoint = dying_save
prune.main({argv!r})
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_prune_killed_while_writing_leaves_the_previous_outputs(tmp_path, weights, sig):
    common = ["--weights", str(weights), "--project", str(tmp_path), "--name", "exp", "--exist-ok"]
    prune.main([*common, "--percent", "0.3"])
    out = tmp_path / "exp"
    before = _snapshot(out)
    assert {"pruned.pt", "pruned.yaml", "report.md", "report.json", "channels.png"} <= set(before)

    code = DIE_WHILE_SAVING.format(root=str(ROOT), sig=sig, argv=[*common, "--percent", "0.5"])
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=_ctrl_c_as_in_a_terminal)
    if sig == "SIGINT":
        assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert r.stderr.strip().splitlines()[-1] == "Interrupted"
        assert sorted(p.name for p in out.iterdir()) == sorted(before)  # the staging folder is gone too
    else:
        assert r.returncode == -signal.SIGKILL
    assert _snapshot(out) == before  # not one byte of the 0.3 run changed

    rec = prune.main([*common, "--percent", "0.5"])  # the next run completes and clears a killed run's leftovers
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert rec["settings"]["percent"] == 0.5
    shapes = [{k: v.shape for k, v in m.state_dict().items()}
              for m in (load_model(out / "pruned.pt"), DetectionModel(out / "pruned.yaml"))]
    assert shapes[0] == shapes[1]  # the yaml and the checkpoint come from the same run


def test_prune_is_deterministic(tmp_path, weights):
    recs = [prune.main(["--weights", str(weights), "--percent", "0.4", "--project", str(tmp_path), "--name", n])
            for n in ("a", "b")]
    a, b = (Path(r["save_dir"]) for r in recs)
    assert (a / "pruned.yaml").read_text() == (b / "pruned.yaml").read_text()
    sa, sb = load_model(a / "pruned.pt").state_dict(), load_model(b / "pruned.pt").state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_eagleeye_same_seed_same_choice(tmp_path, weights):
    data = make_dataset(tmp_path / "data", n=8, nc=3, size=(64, 80))

    def run(name: str, seed: int) -> dict:
        return prune.main(["--weights", str(weights), "--method", "eagleeye", "--flops-target", "0.6",
                           "--candidates", "3", "--calib-batches", "1", "--batch-size", "4", "--imgsz", "64",
                           "--data", str(data), "--workers", "0", "--seed", str(seed), "--project", str(tmp_path),
                           "--name", name])

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert a["settings"]["candidates"] == b["settings"]["candidates"]
    assert (Path(a["save_dir"]) / "pruned.yaml").read_text() == (Path(b["save_dir"]) / "pruned.yaml").read_text()
    kept = [[c_["kept"] for c_ in r["settings"]["candidates"]] for r in (a, c)]
    assert kept[0] != kept[1]  # the seed is what draws them


def test_ctrl_c_inside_torch_save_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C while torch.save writes makes torch's zip writer raise a RuntimeError from its cleanup; the scripts must
    still end with "Interrupted" and 130 (a CPU run hit this), leave no temp file, and other errors must propagate."""
    import utils.files
    from utils.checkpoint import save_checkpoint
    from utils.errors import cli

    import builtins

    writes = [0]

    class CutFile:  # a file whose third write is where the user presses Ctrl-C
        def __init__(self, f):
            self.f = f

        def write(self, b):
            writes[0] += 1
            if writes[0] == 3:
                raise KeyboardInterrupt
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(utils.files, "open", lambda path, mode: CutFile(builtins.open(path, mode)), raising=False)
    with pytest.raises(SystemExit) as e:
        cli(lambda: save_checkpoint({"w": torch.zeros(1000), "v": torch.ones(1000)}, tmp_path / "last.pt"))()
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "Interrupted"
    assert list(tmp_path.iterdir()) == []  # neither last.pt nor a temp file

    def broken():
        raise RuntimeError("not an interrupt")

    with pytest.raises(RuntimeError, match="not an interrupt"):
        cli(broken)()
