"""train.py end to end on tiny datasets: outputs, learning, hooks, resume, interruption, bad input."""

from __future__ import annotations

import copy
import functools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from conftest import ROOT, assert_one_line_error, make_dataset, run_script
from helpers import hyp_file, odd_anchors, read_csv, set_odd_anchors, tiny_args, wait_for
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from utils.engine import Hook
from utils.results import RESULT_KEYS

NO_AUG = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "fliplr": 0.0, "mosaic": 0.0}


class CountingHook(Hook):
    """Counts what the loop calls and pulls the first BN's gamma towards 0 through an extra loss term."""

    def __init__(self, strength: float = 0.0):
        self.calls = {"start": 0, "steps": 0, "end": 0, "loss": 0}
        self.grads_ready, self.strength = True, strength

    def on_train_start(self, state):
        self.calls["start"] += 1

    def loss(self, state, imgs, preds, targets):
        self.calls["loss"] += 1
        return self.strength * state.bare.model[0].bn.weight.abs().sum() * imgs.shape[0]

    def after_backward(self, state):
        self.calls["steps"] += 1
        self.grads_ready &= state.bare.model[0].bn.weight.grad is not None

    def epoch_columns(self, state):
        return {"hook/steps": float(self.calls["steps"])}

    def on_train_end(self, state):
        self.calls["end"] += 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One 2-epoch run on 8 images, shared by the tests that inspect its outputs."""
    tmp = tmp_path_factory.mktemp("tiny")
    data = make_dataset(tmp / "data", n=8, size=(64, 80))
    hook = CountingHook()
    rec = train.run(train.parse_opt(tiny_args(tmp, data, "--hyp", str(hyp_file(tmp, nbs=4)))), [hook])
    return tmp / "runs" / "exp", rec, hook, data


def test_run_writes_checkpoints_results_and_plots(tiny):
    save_dir, rec, _, _ = tiny
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "results.json", "labels.jpg",
              "opt.yaml", "hyp.yaml"):
        assert (save_dir / f).is_file(), f
    rows = read_csv(save_dir / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert set(RESULT_KEYS) <= set(rows[0])
    assert all(float(r["train/box_loss"]) > 0 for r in rows)
    ckpt = load_checkpoint(save_dir / "weights/best.pt")
    assert ckpt["epoch"] == -1 and ckpt["optimizer"] is None  # finished runs are stripped, as upstream
    model = load_model(save_dir / "weights/last.pt")
    assert model.names == {0: "c0", 1: "c1"} and model.nc == 2
    assert next(iter(ckpt["model"].parameters())).dtype == torch.float16
    assert rec["epochs"] == 2 and 0 <= rec["mAP50"] <= 1


def test_hooks_are_called_by_the_loop(tiny):
    save_dir, _, hook, _ = tiny
    # 8 images, batch 4, nominal batch 4: one optimizer step per batch, 2 batches per epoch
    assert hook.calls == {"start": 1, "steps": 4, "end": 1, "loss": 4}
    assert hook.grads_ready
    assert [float(r["hook/steps"]) for r in read_csv(save_dir / "results.csv")] == [2.0, 4.0]


def test_extra_loss_term_reaches_the_weights(tmp_path, tiny):
    """A strong L1 term on the first BN's gamma (through Hook.loss) shrinks it; the plain run does not."""
    _, _, _, data = tiny
    hyp = hyp_file(tmp_path, nbs=4, warmup_epochs=0, lr0=0.05)
    base = train.run(train.parse_opt(tiny_args(tmp_path, data, "--hyp", str(hyp), "--name", "a", "--noplots")))
    pulled = train.run(train.parse_opt(tiny_args(tmp_path, data, "--hyp", str(hyp), "--name", "b", "--noplots")),
                       [CountingHook(strength=1.0)])
    g0 = load_model(base["last"]).model[0].bn.weight.abs().mean()
    g1 = load_model(pulled["last"]).model[0].bn.weight.abs().mean()
    assert g1 < 0.8 * g0


@pytest.mark.slow
def test_overfits_eight_images(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(128, 128), seed=3)
    hyp = hyp_file(tmp_path, nbs=8, warmup_epochs=0, **NO_AUG)
    args = tiny_args(tmp_path, data, "--hyp", str(hyp), "--noval", "--noplots", epochs=200, imgsz=128)
    args[args.index("--batch-size") + 1] = "8"
    rec = train.run(train.parse_opt(args))
    assert rec["mAP50"] >= 0.9, rec


def test_sigkill_then_resume_finishes_the_planned_epochs(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    args = tiny_args(tmp_path, data, "--hyp", str(hyp_file(tmp_path, nbs=4)), "--noplots", epochs=3)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = tmp_path / "runs/exp/weights/last.pt"
    wait_for(last, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(last)  # never truncated: written to a temp file and renamed
    assert ckpt["epoch"] in (0, 1) and ckpt["optimizer"] is not None

    seen = {}

    class Probe(Hook):
        def on_train_start(self, state):
            seen["epoch"], seen["updates"] = state.epoch, state.ema.updates
            seen["opt"] = copy.deepcopy(state.optimizer.state_dict())  # live tensors: training goes on
            seen["ema"] = {k: v.clone() for k, v in state.ema.ema.state_dict().items()}
            seen["model"] = {k: v.clone() for k, v in state.bare.state_dict().items()}

    rec = train.run(train.parse_opt(["--resume", str(last), "--workers", "0"]), [Probe()])
    assert seen["epoch"] == ckpt["epoch"] + 1 and seen["updates"] == ckpt["updates"]
    saved = ckpt["optimizer"]["state"]
    assert len(seen["opt"]["state"]) == len(saved) > 0
    for k, v in saved.items():
        assert torch.equal(seen["opt"]["state"][k]["momentum_buffer"], v["momentum_buffer"])
    assert [g["lr"] for g in seen["opt"]["param_groups"]] == [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
    ema_saved = ckpt["ema"].float().state_dict()
    assert all(torch.equal(seen["ema"][k], ema_saved[k]) for k in ema_saved)
    model_saved = ckpt["model"].float().state_dict()  # the weights themselves, not the EMA's
    assert seen["model"].keys() == model_saved.keys()
    assert all(torch.equal(seen["model"][k], model_saved[k]) for k in model_saved)
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "runs/exp/results.csv")] == [0, 1, 2]
    assert rec["epochs"] == 3 - (ckpt["epoch"] + 1)
    r = run_script("train.py", "--resume", str(last))
    assert_one_line_error(r, "nothing to resume")


def test_same_seed_same_results(tmp_path, tiny):
    """Two epochs with the same --seed on CPU: the same results.csv and the same weights; another seed differs."""
    _, _, _, data = tiny
    hyp = str(hyp_file(tmp_path, nbs=4))
    runs = {"a": "0", "b": "0", "c": "1"}
    recs = {n: train.run(train.parse_opt(tiny_args(tmp_path, data, "--hyp", hyp, "--name", n, "--noplots", "--seed",
                                                   seed, epochs=2))) for n, seed in runs.items()}
    rows = {n: read_csv(tmp_path / "runs" / n / "results.csv") for n in runs}
    assert len(rows["a"]) == 2 and rows["a"] == rows["b"]
    assert rows["a"] != rows["c"]
    wa, wb, wc = (load_model(recs[n]["last"]).state_dict() for n in runs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_transfer_from_weights_keeps_anchors_and_reports(tmp_path, tiny, log_lines):
    save_dir, _, _, data = tiny
    ckpt = load_checkpoint(save_dir / "weights/best.pt")
    set_odd_anchors(ckpt["model"])  # the yaml's own anchors would pass for kept ones
    best = tmp_path / "best.pt"
    save_checkpoint(ckpt, best)
    args = tiny_args(tmp_path, data, "--noplots", epochs=1)
    args[args.index("--cfg"):args.index("--cfg") + 2] = ["--weights", str(best)]
    rec = train.run(train.parse_opt(args))
    n = len(load_model(best).state_dict())
    assert f"Transferred {n}/{n} items from {best}" in log_lines
    assert odd_anchors(load_model(rec["last"]))


def test_bad_input_is_one_clear_line(tmp_path):
    r = run_script("train.py", "--weights", "yolov5s.pt", "--epochs", "1")
    assert_one_line_error(r, "yolov5s.pt", "not found", "no download")
    r = run_script("train.py", "--cfg", "nosuch.yaml", "--epochs", "1")
    assert_one_line_error(r, "nosuch.yaml")
    r = run_script("train.py", "--epochs", "0")
    assert_one_line_error(r, "--epochs")
    r = run_script("train.py", "--hyp", "data/coco128.yaml", "--epochs", "1")
    assert_one_line_error(r, "coco128.yaml", "lr0")
    data = make_dataset(tmp_path / "d", n=2)
    r = run_script("train.py", "--data", str(data), "--device", "cuda:0", "--epochs", "1",
                   "--project", str(tmp_path / "runs"))
    if not torch.cuda.is_available():
        assert_one_line_error(r, "CUDA")
    assert not list(tmp_path.glob("runs/*/weights/*.pt"))


DUMP_WEIGHTS = """
import os, sys
import torch
sys.path.insert(0, {root!r})
import train
from utils.engine import Hook


class DumpWeights(Hook):
    \"\"\"Each rank writes its parameters: on_epoch_end runs on every rank (on_train_end on rank 0 only).\"\"\"

    def save(self, state, tag):
        params = {{k: v.detach().clone() for k, v in state.bare.named_parameters()}}
        torch.save(params, os.path.join({out!r}, tag + os.environ["RANK"] + ".pt"))

    def on_train_start(self, state):
        self.save(state, "start")

    def on_epoch_end(self, state):
        self.save(state, "rank")


train.run(train.parse_opt(sys.argv[1:]), [DumpWeights()])
"""


def _free_port() -> int:
    with socket.socket() as s:  # a fixed port collides with another suite running on the same machine
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_with_dump(tmp_path: Path, name: str, nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    """train.run under torchrun through a script whose hook writes every rank's weights to tmp_path/name."""
    (tmp_path / name).mkdir()
    script = tmp_path / f"{name}.py"
    script.write_text(DUMP_WEIGHTS.format(root=str(ROOT), out=str(tmp_path / name)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun sets it only for nproc > 1: the same conv maths in both
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                        "--master_port", str(_free_port()), str(script), *args, "--name", name],  # the last wins
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    """torchrun with 2 gloo processes: one epoch trains, only rank 0 evaluates and writes, and the gradients are
    all-reduced: both ranks end with the same weights, and with those of one process that accumulates the same two
    images per optimizer step (torchrun --nproc_per_node 1: DDP over one rank is plain single-process maths).

    Equality is exact by construction: one image per rank and per step, so BN normalises each image by itself in both
    runs (DDP without SyncBN keeps batch statistics per rank); no augmentation, so an image is the same tensor in both;
    both use the DistributedSampler's permutation for the seed, so step k sees images 2k and 2k+1 in both; no warmup,
    whose schedule counts batches; and the all-reduced gradient (2 g_a + 2 g_b) / 2 is the accumulated g_a + g_b to
    the bit (scaling by 2 is exact). BN running statistics are per rank, so only parameters are compared."""
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    hyp = hyp_file(tmp_path, nbs=2, warmup_epochs=0, **NO_AUG)
    args = tiny_args(tmp_path, data, "--hyp", str(hyp), "--noplots", "--noautoanchor", epochs=1)
    args[args.index("--batch-size") + 1] = "2"  # 1 image per rank, accumulate 1 (nbs 2)
    r = _torchrun_with_dump(tmp_path, "ddp", 2, args)
    save_dir = tmp_path / "runs/ddp"
    assert [int(x["epoch"]) for x in read_csv(save_dir / "results.csv")] == [0]
    assert "DDP: 2 processes, gloo backend" in r.stdout
    assert r.stdout.count("Results saved to") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]  # no ddp2 from a second rank
    assert load_checkpoint(save_dir / "weights/last.pt")["epoch"] == -1

    args[args.index("--batch-size") + 1] = "1"  # 1 image per batch, accumulate 2 (nbs 2): the same 2 per step
    _torchrun_with_dump(tmp_path, "one", 1, args)
    w0, w1, start, ref = (torch.load(tmp_path / f, weights_only=True)
                          for f in ("ddp/rank0.pt", "ddp/rank1.pt", "ddp/start0.pt", "one/rank0.pt"))
    assert w0.keys() == w1.keys() == ref.keys()
    assert [k for k in w0 if not torch.equal(w0[k], w1[k])] == []  # the ranks stepped together
    assert [k for k in w0 if not torch.equal(w0[k], ref[k])] == []  # ... with the whole batch's gradient
    assert sum(not torch.equal(w0[k], start[k]) for k in w0) > 0.9 * len(w0)  # and training moved the weights


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path, tiny):
    """The process dies while torch.save is halfway through the new last.pt: the old one is still whole."""
    save_dir = tiny[0]
    last = tmp_path / "last.pt"
    last.write_bytes((save_dir / "weights/last.pt").read_bytes())
    code = f"""
import os, signal, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from utils.checkpoint import load_checkpoint, save_checkpoint

def dying_save(obj, f):
    f.write(b"half a checkpoint" * 10000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

ckpt = load_checkpoint({str(last)!r})
torch.save = dying_save
save_checkpoint({{**ckpt, "epoch": 99}}, {str(last)!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == -1  # the finished run's file, not the half-written epoch 99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the AMP path needs CUDA (run on a GPU machine)")
@pytest.mark.parametrize("script", ["train.py", "train_sparse.py"])
def test_amp_training_on_cuda(tmp_path, script):
    """On CUDA the loop runs under autocast with a GradScaler and evaluates its fp32 EMA in half precision."""
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    args = [a if a != "cpu" else "0" for a in tiny_args(tmp_path, data, "--noplots")]
    r = run_script(script, *args, *(["--sr", "0.01"] if script == "train_sparse.py" else []))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_csv(tmp_path / "runs/exp/results.csv")
    assert len(rows) == 2 and all(float(x["train/box_loss"]) > 0 for x in rows)
    assert load_model(tmp_path / "runs/exp/weights/last.pt").model[-1].nc == 2


def test_cpu_run_says_what_it_will_cost(tmp_path, log_lines, monkeypatch):
    from utils import engine

    line = engine.cost_warning(2.0, 100, 30)  # 200 s an epoch, 30 epochs: 1.7 h
    assert "an epoch takes about 3 min" in line and "30 epochs take about 1.7 h" in line and engine.SMALL in line
    assert engine.cost_warning(0.5, 100, 30) is None  # 25 min in all: no warning
    assert "about 50 s here" in engine.cost_warning(0.5, 100, 100)
    monkeypatch.setattr(engine, "COST_PROBE", 2)
    monkeypatch.setattr(engine, "cost_warning", functools.partial(engine.cost_warning, limit_hours=0))
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    train.run(train.parse_opt(tiny_args(tmp_path, data, "--noplots", epochs=2)))
    warned = [x for x in log_lines if x.startswith("WARNING: CPU training:")]
    assert len(warned) == 1 and "2 epochs take about" in warned[0]  # once, at the start of the run
