"""train_sparse.py: the L1 hook on BN gamma, its budget arithmetic, and a short sparse run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train
import train_sparse
from conftest import ROOT, make_dataset
from helpers import hyp_file, read_csv, tiny_args
from models.yolo import DetectionModel
from utils.hooks.sparsity import BNSparsity, lr_sum, sr_factor
from utils.optim import Warmup, lr_lambda
from utils.pruning.graph import prunable_bns

HYP = {"lr0": 0.01, "momentum": 0.9, "warmup_bias_lr": 0.1, "warmup_momentum": 0.8}


def fake_state(nb: int, epochs: int, accumulate: int, warmup_n: int = -1, lf=lambda e: 1.0, epoch: int = 0):
    return SimpleNamespace(hyp=HYP, nb=nb, epochs=epochs, epoch=epoch, warmup=Warmup(warmup_n, HYP, accumulate, lf))


def test_sr_schedules():
    assert [sr_factor("constant", e, 5) for e in range(5)] == [1.0] * 5
    assert [sr_factor("linear", e, 5) for e in range(5)] == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])


def test_lr_sum_counts_optimizer_steps_and_schedules():
    # 2 epochs of 4 batches, one step every 2 batches: 4 steps at lr0
    assert lr_sum(fake_state(4, 2, 2), "constant") == pytest.approx(4 * 0.01)
    assert lr_sum(fake_state(4, 2, 2), "linear") == pytest.approx(2 * 0.01 * (1 + 0.1))
    lf = lr_lambda(0.01, 2)  # linear lr: 1.0 in epoch 0, 0.505 in epoch 1
    assert lr_sum(fake_state(4, 2, 1, lf=lf), "constant") == pytest.approx(4 * 0.01 * (1 + 0.505))
    assert lr_sum(fake_state(4, 2, 1, epoch=1), "constant") == pytest.approx(4 * 0.01)  # a resume counts the rest
    # warmup over 4 iterations, accumulate 1: lr is 0, 1/4, 2/4, 3/4 of lr0 in epoch 0, then lr0 for 4 batches
    assert lr_sum(fake_state(4, 2, 1, warmup_n=4), "constant") == pytest.approx(0.01 * (1.5 + 4))


def test_shrink_gives_a_resumed_run_the_sr_it_started_with(tmp_path, log_lines):
    """--shrink derives sr from the whole run's steps: resumed at epoch 1 of 2, sr must not grow to spend the whole
    shrink in the remaining epoch (seen on coco128: a run resumed 5 epochs before its end lost all its mAP)."""
    model = DetectionModel("yolov5n.yaml", nc=3)
    srs, budgets = [], []
    for epoch in (0, 1):
        state = fake_state(4, 2, 1, epoch=epoch)
        state.bare, state.opt, state.save_dir = model, None, tmp_path
        hook = BNSparsity(shrink=0.5)
        hook.on_train_start(state)
        srs.append(hook.sr)
        budgets.append(hook.record["budget"])
    assert srs[0] == srs[1] == pytest.approx(0.5 * (1 - 0.9) / (8 * 0.01))  # 8 steps at lr0 over the whole run
    assert budgets == pytest.approx([0.5, 0.5])  # sparsity.json: the whole run's
    said = [x for x in log_lines if "can shrink a gamma by about" in x]
    assert "about 0.5 over the run" in said[0] and "about 0.25 over the rest of the run" in said[1]
    assert any("bn_gamma.png starts at epoch 1" in x for x in log_lines)  # no bn_gamma.json in tmp_path


def test_after_backward_adds_sr_times_sign_to_prunable_gammas_only():
    model = DetectionModel("yolov5n.yaml", nc=3)
    hook = BNSparsity(sr=0.01)
    hook.bns = prunable_bns(model)
    assert hook.bns
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with torch.no_grad():
        first = next(iter(hook.bns.values()))
        first.weight[0] = -0.5
    hook.after_backward(SimpleNamespace(epoch=0, epochs=1))
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            want = 0.01 * torch.sign(m.weight) if name in hook.bns else torch.zeros_like(m.weight)
            assert torch.equal(m.weight.grad, want), name
            assert torch.equal(m.bias.grad, torch.zeros_like(m.bias))
    assert first.weight.grad[0] == -0.01


def test_sparse_run_shrinks_gammas_and_reports(tmp_path, log_lines):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    hyp = hyp_file(tmp_path, nbs=4, warmup_epochs=0)
    args = tiny_args(tmp_path, data, "--hyp", str(hyp), "--shrink", "0.5")
    rec = train_sparse.run(train_sparse.parse_opt(args))
    save_dir = Path(rec["weights"]).parents[1]
    rows = read_csv(save_dir / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    means = [float(r["sparse/mean|gamma|"]) for r in rows]
    assert means[1] < means[0] < 1.0  # BN weights start at 1 and the penalty pulls them down
    rec_s = json.loads((save_dir / "sparsity.json").read_text())
    assert rec_s["budget"] == pytest.approx(0.5) and rec_s["sr"] > 0
    assert 0 < rec_s["safe_prune_percent"] < 1
    assert (save_dir / "bn_gamma.png").stat().st_size > 10_000
    assert any("verdict" in x and "free to cut" in x for x in log_lines)


def test_tiny_sr_warns_that_it_cannot_sparsify(tmp_path, log_lines):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    args = tiny_args(tmp_path, data, "--sr", "1e-5", "--noplots", epochs=1)
    train_sparse.run(train_sparse.parse_opt(args))
    warn = [x for x in log_lines if "cannot sparsify" in x]
    assert len(warn) == 1 and "--shrink" in warn[0]
    assert "the median |gamma| is 1.000." in warn[0]  # a fresh model's BN weights are all 1



def test_resumed_sparse_run_plots_and_reports_the_whole_run(tmp_path, monkeypatch):
    """A run stopped after writing epoch 1's gamma row but before its checkpoint, then resumed: bn_gamma.json keeps
    the rows from before training on (epoch 1's stale row replaced), and sparsity.json the start's median, not the
    resumed model's (seen on coco128: a 300-epoch run resumed at epoch 76 plotted and reported only its last leg)."""
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    hyp = hyp_file(tmp_path, nbs=4, warmup_epochs=0)
    args = tiny_args(tmp_path, data, "--hyp", str(hyp), "--shrink", "0.5", epochs=3)
    columns = BNSparsity.epoch_columns

    def stop_after_epoch_1_columns(self, state):
        out = columns(self, state)
        if state.epoch == 1:
            raise RuntimeError("stopped")
        return out

    monkeypatch.setattr(BNSparsity, "epoch_columns", stop_after_epoch_1_columns)
    with pytest.raises(RuntimeError, match="stopped"):
        train_sparse.run(train_sparse.parse_opt(args))
    save_dir = tmp_path / "runs/exp"
    first = json.loads((save_dir / "bn_gamma.json").read_text())
    assert first["epochs"] == [-1, 0, 1] and first["start"]["median_gamma_start"] == 1.0
    assert torch.load(save_dir / "weights/last.pt", weights_only=False)["epoch"] == 0

    monkeypatch.setattr(BNSparsity, "epoch_columns", columns)
    train_sparse.run(train_sparse.parse_opt(["--resume", str(save_dir / "weights/last.pt"), "--workers", "0"]))
    hist = json.loads((save_dir / "bn_gamma.json").read_text())
    assert hist["epochs"] == [-1, 0, 1, 2]
    assert hist["counts"][:2] == first["counts"][:2] and hist["edges"] == first["edges"]
    assert len({sum(c) for c in hist["counts"]}) == 1  # every row counts all prunable channels
    rec = json.loads((save_dir / "sparsity.json").read_text())
    assert rec["median_gamma_start"] == 1.0 and rec["budget"] == pytest.approx(0.5)
    assert rec["median_gamma_end"] < 1.0
    assert (save_dir / "bn_gamma.png").stat().st_size > 10_000


def _engine_step(scale: float, sr: float = 0.01, lr: float = 0.1):
    """One batch through the real train_one_epoch (SGD without momentum, a GradScaler of `scale` when > 1) with the
    L1 hook; returns (hook, gammas before, the gradient the loss alone gives them, gammas after)."""
    from copy import deepcopy

    from utils.augmentations import HYP_DEFAULTS
    from utils.engine import TrainState, train_one_epoch
    from utils.files import yaml_load
    from utils.loss import ComputeLoss

    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=2)
    model.hyp = {**HYP_DEFAULTS, **yaml_load(ROOT / "data/hyps/hyp.scratch-low.yaml")}
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.copy_(torch.randn(bn.num_features) * 0.5)
    imgs = (torch.rand(2, 3, 64, 64) * 255).to(torch.uint8)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [1, 1, 0.3, 0.6, 0.2, 0.2]])
    ref_model = deepcopy(model).train()  # the same forward (autocast as the loop uses it), without the hook
    with torch.autocast("cpu", enabled=scale > 1):
        loss, _ = ComputeLoss(ref_model)(ref_model(imgs.float() / 255), targets)
    (loss * scale).backward()
    hook = BNSparsity(sr=sr)
    hook.bns = prunable_bns(model)
    ref_modules = dict(ref_model.named_modules())
    ref = {n: ref_modules[n].weight.grad / scale for n in hook.bns}
    before = {n: m.weight.detach().clone() for n, m in hook.bns.items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    for g in opt.param_groups:
        g["initial_lr"] = lr
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, enabled=scale > 1)
    state = TrainState(model, opt, None, model.hyp, 1, 1, Path("."), torch.device("cpu"),
                       loader=[(imgs, targets, None, None)], compute_loss=ComputeLoss(model),
                       warmup=Warmup(-1, model.hyp, 1, lambda e: 1.0), scaler=scaler,
                       is_main=False)  # no progress bar
    big = pytest.MonkeyPatch()
    big.setattr("utils.engine.MAX_GRAD_NORM", 1e9)  # clipping would rescale the step
    try:
        train_one_epoch(state, [hook])
    finally:
        big.undo()
    return hook, before, ref, {n: m.weight.detach().clone() for n, m in hook.bns.items()}


@pytest.mark.parametrize("scale", [1.0, 1024.0])
def test_penalty_moves_gamma_by_the_hand_computed_subgradient_step(scale):
    """gamma <- gamma - lr * (dL/dgamma + sr * sign(gamma)), with or without a GradScaler: under one the penalty is
    added to the unscaled gradient (added before unscaling it would shrink to sr / scale)."""
    lr, sr = 0.1, 0.01
    hook, before, ref, after = _engine_step(scale, sr, lr)
    for n in hook.bns:
        want = before[n] - lr * (ref[n] + sr * torch.sign(before[n]))
        assert torch.allclose(after[n], want, atol=1e-5, rtol=0), n
        moved = (before[n] - after[n]) / lr - ref[n]  # the penalty's own contribution
        assert torch.allclose(moved, sr * torch.sign(before[n]), atol=1e-4), n


def test_gamma_lr_scales_loss_and_penalty_gradients_alike():
    model = DetectionModel("yolov5n.yaml", nc=3)
    hook = BNSparsity(sr=0.01, gamma_lr=4.0)
    hook.bns = prunable_bns(model)
    g = {}
    for n, m in hook.bns.items():
        m.weight.grad = torch.randn_like(m.weight) * 1e-3
        g[n] = m.weight.grad.clone()
    hook.after_backward(SimpleNamespace(epoch=0, epochs=1))
    for n, m in hook.bns.items():
        assert torch.allclose(m.weight.grad, 4.0 * (g[n] + 0.01 * torch.sign(m.weight)))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_polarization_gradient_is_the_regulariser_autograd(scope):
    """grad += sr * d/dgamma [t * sum|gamma| - sum|gamma - mean(gamma)|] (Zhuang et al. 2020), the mean taken per BN
    layer or over every penalised gamma of the model, checked against autograd of that expression."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=3)
    hook = BNSparsity(sr=0.01, polarize=1.2, polarize_scope=scope)
    hook.bns = prunable_bns(model)
    for m in hook.bns.values():
        with torch.no_grad():
            m.weight.copy_(torch.rand_like(m.weight) * 1.5)
        m.weight.grad = torch.zeros_like(m.weight)
    hook.after_backward(SimpleNamespace(epoch=0, epochs=1))

    ws = [m.weight.detach().clone().requires_grad_() for m in hook.bns.values()]
    if scope == "global":
        w = torch.cat(ws)
        reg = 1.2 * w.abs().sum() - (w - w.mean()).abs().sum()
        means = [w.mean().detach().expand_as(x) for x in ws]
    else:
        reg = sum(1.2 * x.abs().sum() - (x - x.mean()).abs().sum() for x in ws)
        means = [x.mean().detach().expand_as(x) for x in ws]
    (0.01 * reg).backward()
    got = torch.cat([m.weight.grad.flatten() for m in hook.bns.values()])
    want = torch.cat([x.grad for x in ws])
    assert torch.allclose(got, want, atol=1e-7)
    low = torch.cat([x.detach() < mu for x, mu in zip(ws, means)])
    assert got[low].min() > 3 * got[~low].max() > 0  # below the mean pulled ~(t+1)/(t-1) = 11x harder


def test_sparse_run_with_teacher_distils_while_the_penalty_shrinks(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    base = train.run(train.parse_opt(tiny_args(tmp_path, data, "--noplots", "--name", "base", epochs=1)))
    args = [a for a in tiny_args(tmp_path, data, "--noplots", "--shrink", "0.5", epochs=1)
            if a not in ("--cfg", "yolov5n.yaml")]
    rec = train_sparse.run(train_sparse.parse_opt(["--weights", base["last"], "--teacher", base["last"], *args]))
    rows = read_csv(Path(rec["weights"]).parents[1] / "results.csv")
    assert 0 < float(rows[0]["train/kd_loss"]) < 0.5  # the student starts as the teacher and the penalty moves it
    assert float(rows[0]["sparse/mean|gamma|"]) < 1.0
