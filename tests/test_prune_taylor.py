"""Pruning without sparse training: first-order Taylor importance, per-layer sensitivity and --method sensitivity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import prune
from conftest import assert_one_line_error, make_dataset, run_script, shared_path
from helpers import assert_no_empty_layer, assert_rebuilds, save_model, spread_gammas
from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, load_model
from utils.data import check_dataset
from utils.pruning import sensitivity
from utils.pruning.flops import ChannelCost
from utils.pruning.graph import ChannelGroup, Member, build_groups
from utils.pruning.methods import create
from utils.pruning.pruner import PruneSettings, SearchData, prune_model
from utils.pruning.sensitivity import Cuts, Curve, choose_ratios, drop_for_flops, kept_width
from utils.pruning.taylor import taylor_scores, weight_taylor_scores
from utils.torch_utils import model_flops

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def n_model():
    torch.manual_seed(0)
    return spread_gammas(DetectionModel("yolov5n.yaml", nc=3))


def _toy():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3)).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
        m[1].bias.copy_(torch.tensor([0.3, 0.0, -0.7]))
        m[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        m[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
    return m


def test_taylor_scores_equal_a_hand_computation():
    """y = gamma * xhat + beta and L = sum(w * y): dL/dgamma_c = sum(w_c * xhat_c), dL/dbeta_c = sum(w_c), so the
    score of channel c is |gamma_c * sum(w_c * xhat_c) + beta_c * sum(w_c)|, averaged over batches."""
    m = _toy()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(2, 2, 4, 4, generator=g), torch.zeros(0, 6)) for _ in range(2)]
    w = torch.randn(2, 3, 4, 4, generator=g)
    groups = [ChannelGroup([Member("1", "0", 0)], [], 3)]
    scores = taylor_scores(m, groups, batches, lambda out, t: (out * w).sum())
    bn, conv = m[1], m[0]
    by_hand = torch.zeros(3)
    for x, _ in batches:
        with torch.no_grad():
            xhat = (conv(x) - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
        by_hand += (bn.weight.detach() * (w * xhat).sum((0, 2, 3)) + bn.bias.detach() * w.sum((0, 2, 3))).abs()
    assert torch.allclose(scores[0], by_hand / 2, rtol=1e-5, atol=1e-6)
    one = taylor_scores(m, groups, batches[:1], lambda out, t: (out * w).sum())[0]  # one batch
    assert not torch.allclose(one, scores[0])
    assert all(p.grad is None for p in m.parameters())  # the model is left as it was
    assert all(p.requires_grad for p in m.parameters()) and not m.training


def test_a_residual_group_gets_one_score_from_all_its_bns(n_model):
    groups = build_groups(n_model)
    k, residual = next((k, g) for k, g in enumerate(groups) if g.residual)
    assert len(residual.bns) > 1
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def loss(out, t):
        return sum((p.float() ** 2).mean() for p in out[1])

    scores = taylor_scores(n_model, groups, [(x, torch.zeros(0, 6))], loss)
    assert [len(s) for s in scores] == [g.channels for g in groups]
    modules = dict(n_model.named_modules())
    params = [p for b in residual.bns for p in (modules[b].weight, modules[b].bias)]
    for p in n_model.parameters():
        p.requires_grad_(True)
    grads = dict(zip(params, torch.autograd.grad(loss(n_model(x), None), params)))
    by_hand = torch.zeros(residual.channels)
    for mem in residual.members:
        b, sl = modules[mem.bn], slice(mem.offset, mem.offset + residual.channels)
        by_hand += (b.weight * grads[b.weight] + b.bias * grads[b.bias]).detach()[sl]
    assert torch.allclose(scores[k], by_hand.abs(), rtol=1e-4, atol=1e-8)


def _search_data(model, n=2):
    """Training batches with real targets and the YOLOv5 loss, as prune.py builds them."""
    g = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(n):
        t = torch.tensor([[0, 0, 0.3, 0.4, 0.2, 0.3], [0, 2, 0.7, 0.6, 0.3, 0.2], [1, 1, 0.5, 0.5, 0.4, 0.4]])
        batches.append((torch.rand(2, 3, 64, 64, generator=g), t))
    return SearchData(batches, None, prune.yolo_loss(3, 3, 64))


def test_taylor_prunes_to_a_flops_target_and_rebuilds(n_model):
    res = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320), _search_data(n_model), "taylor")
    ratio = model_flops(res.model, 320) / model_flops(n_model, 320)
    assert 0.48 <= ratio <= 0.5 + 1e-3
    assert_no_empty_layer(res.model)
    assert_rebuilds(res.model)
    with pytest.raises(ValueError, match="--data"):
        prune_model(n_model, PruneSettings(percent=0.3), method="taylor")


def test_kept_width_and_choose_ratios():
    assert [kept_width(16, r) for r in (0.1, 0.5, 0.9)] == [15, 8, 2]
    assert kept_width(16, 0.9, min_channels=4) == 4 and kept_width(16, 0.6, round_to=8) == 8
    curves = [Curve(0, "a", 8, [0.1, 0.5, 0.9], [], [0.79, 0.77, 0.40]),   # drops 0.01 0.03 0.40
              Curve(1, "b", 8, [0.1, 0.5, 0.9], [], [0.70, 0.79, 0.79]),   # drops 0.10 0.01 0.01: stops at 0.1
              Curve(2, "c", 8, [0.1, 0.5, 0.9], [], [0.80, 0.80, 0.79])]   # drops 0.00 0.00 0.01
    assert choose_ratios(curves, 0.80, 0.02) == [0.1, 0.0, 0.9]
    assert choose_ratios(curves, 0.80, 0.5) == [0.9, 0.9, 0.9]
    widths = {}

    def gflops(kept):  # one FLOP a channel
        widths[tuple(kept)] = sum(kept)
        return float(sum(kept))

    # 24 channels; max-drop 0.01 keeps a at 0.1 (8), b whole (8), c at 0.9 (1) = 17; 0.03 cuts a to half: 13
    assert drop_for_flops(curves, 0.80, gflops, 17) == pytest.approx(0.01)
    assert drop_for_flops(curves, 0.80, gflops, 14) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="largest analysed ratio"):
        drop_for_flops(curves, 0.80, gflops, 2)


def test_sensitivity_curves_fall_on_the_upstream_fixture(tmp_path, shapes_yaml):
    """On a trained model, cutting 90% of a layer scores no higher than cutting 10% of it."""
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    model = load_model(w).float().eval()
    opt = prune.parse_opt(["--weights", str(w), "--method", "sensitivity", "--max-drop", "0.02", "--calib-batches",
                           "2", "--batch-size", "16", "--data", str(shapes_yaml), "--imgsz", "256", "--workers", "0"])
    data = prune.search_data(check_dataset(str(shapes_yaml), splits=()), opt, model)
    groups = build_groups(model)
    picked = [groups[i] for i in (6, 19, 26, 40)]  # backbone, SPPF input, neck, head: one group each
    scores = [torch.rand(g.channels, generator=torch.Generator().manual_seed(0)) for g in picked]
    base, curves = sensitivity.analyze(model, picked, scores, data.images, data.score, Cuts((0.1, 0.9)))
    assert base == pytest.approx(data.score(model))
    for c in curves:
        assert c.scores[1] <= c.scores[0] + 1e-9, (c.layer, c.scores)
    assert sum(c.scores[0] - c.scores[1] for c in curves) > 0.05  # cutting deeper costs, and visibly
    sensitivity.save_csv(tmp_path / "s.csv", base, curves)
    base2, loaded = sensitivity.load_csv(tmp_path / "s.csv")
    assert base2 == pytest.approx(base, abs=1e-6)
    assert [(c.layer, c.ratios, c.kept) for c in loaded] == [(c.layer, c.ratios, c.kept) for c in curves]
    assert [c.scores for c in loaded] == [pytest.approx(c.scores, abs=1e-6) for c in curves]


def test_sensitivity_cli_writes_the_curves_it_plots_and_prunes_by_them(tmp_path, n_model):
    data = make_dataset(tmp_path / "data", n=8, nc=3, size=(64, 80))
    w = save_model(n_model, tmp_path / "n.pt")
    common = ["--weights", str(w), "--data", str(data), "--imgsz", "64", "--calib-batches", "1", "--batch-size", "4",
              "--workers", "0", "--project", str(tmp_path / "p")]
    rec = prune.main([*common, "--sensitivity", "--ratios", "0.3", "0.6", "--name", "sens"])
    out = Path(rec["save_dir"])
    base, curves = sensitivity.load_csv(out / "sensitivity.csv")
    assert len(curves) == len(build_groups(n_model)) and all(c.ratios == [0.3, 0.6] for c in curves)
    assert [c.scores for c in curves] == [pytest.approx(c["scores"], abs=1e-6) for c in rec["curves"]]
    assert (out / "sensitivity.png").stat().st_size > 0 and not (out / "pruned.pt").exists()
    plotted = sensitivity.plot(tmp_path / "again.png", base, curves)
    assert plotted == [(c.layer, c.ratios, c.scores) for c in curves]  # the figure draws the CSV's numbers

    # every drop allowed: each layer cut by 0.6, from the saved analysis (no new evaluation of the layers)
    rec = prune.main([*common, "--method", "sensitivity", "--max-drop", "1", "--sensitivity-csv",
                      str(out / "sensitivity.csv"), "--name", "cut"])
    s = rec["settings"]
    assert [x["ratio"] for x in s["layer_ratios"]] == [0.6] * len(curves)
    assert [x["kept"] for x in s["layer_ratios"]] == [kept_width(c.channels, 0.6) for c in curves]
    saved = load_model(Path(rec["save_dir"]) / "pruned.pt").float()
    assert_no_empty_layer(saved)
    assert_rebuilds(saved)
    assert load_checkpoint(Path(rec["save_dir"]) / "pruned.pt")["prune"]["method"] == "sensitivity"
    report = json.loads((Path(rec["save_dir"]) / "report.json").read_text())
    assert report["settings"]["max_drop_used"] == 1
    assert "## Ratio per layer" in (Path(rec["save_dir"]) / "report.md").read_text()

    # a FLOPs target picks the max-drop; the result lands at or under it
    rec = prune.main([*common, "--method", "sensitivity", "--flops-target", "0.8", "--sensitivity-csv",
                      str(out / "sensitivity.csv"), "--name", "flops"])
    assert rec["after"]["GFLOPs"] <= 0.8 * rec["before"]["GFLOPs"] * 1.001
    assert rec["settings"]["max_drop_used"] >= 0


def test_an_analysis_of_another_model_is_refused(tmp_path, n_model):
    data = make_dataset(tmp_path / "data", n=8, nc=3, size=(64, 80))
    other = save_model(spread_gammas(DetectionModel("yolov5s.yaml", nc=3)), tmp_path / "s.pt")
    groups = build_groups(load_model(other).float())
    curves = [Curve(k, g.bns[0], g.channels, [0.5], [kept_width(g.channels, 0.5)], [0.1]) for k, g in
              enumerate(groups)]
    sensitivity.save_csv(tmp_path / "s.csv", 0.2, curves)
    w = save_model(n_model, tmp_path / "n.pt")
    r = run_script("prune.py", "--weights", str(w), "--method", "sensitivity", "--max-drop", "0.1",
                   "--sensitivity-csv", str(tmp_path / "s.csv"), "--data", str(data), "--imgsz", "64",
                   "--calib-batches", "1", "--workers", "0", "--project", str(tmp_path / "p"))
    assert_one_line_error(r, "another model")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    r = run_script("prune.py", "--weights", str(w), "--method", "sensitivity", "--max-drop", "0.1",
                   "--sensitivity-csv", str(tmp_path / "bad.csv"), "--data", str(data), "--imgsz", "64",
                   "--workers", "0", "--project", str(tmp_path / "p"))
    assert_one_line_error(r, "bad.csv")
    assert not any((tmp_path / "p").glob("*/pruned.pt"))


@pytest.mark.parametrize("args,needle", [
    (["--method", "taylor", "--percent", "0.5"], "--data"),
    (["--sensitivity"], "--data"),
    (["--method", "sensitivity", "--data", "x.yaml"], "--max-drop"),
    (["--adaptive-bn"], "--data"),
    (["--method", "sensitivity", "--max-drop", "0.1", "--ratios", "0.5", "0.2"], "--ratios"),
])
def test_bad_settings_are_one_line(tmp_path, n_model, args, needle):
    w = save_model(n_model, tmp_path / "n.pt")
    r = run_script("prune.py", "--weights", str(w), *args, "--imgsz", "64", "--project", str(tmp_path / "p"))
    assert_one_line_error(r, needle)


def test_channel_cost_of_sensitivity_widths(n_model):
    """The widths --method sensitivity keeps are the ones it costs: ChannelCost of kept_width per group."""
    groups = build_groups(n_model)
    cost = ChannelCost(n_model, groups, 128)
    curves = [Curve(k, g.bns[0], g.channels, [0.5], [kept_width(g.channels, 0.5)], [0.0]) for k, g in
              enumerate(groups)]
    res = prune_model(n_model, PruneSettings(imgsz=128), SearchData(curves=(0.0, curves)),
                      create("sensitivity", max_drop=0.5))
    assert model_flops(res.model, 128) == pytest.approx(cost.gflops([kept_width(g.channels, 0.5) for g in groups]),
                                                        rel=2e-3)


def test_weight_taylor_scores_equal_a_hand_computation(n_model):
    """--taylor-score weights: gradients summed over the batches, then per channel sum |p * grad| over each owned
    parameter (members' conv output kernels, BN gamma and beta, non-depth-wise consumers' input kernels), the mean
    over those layers, divided by the group's mean."""
    groups = build_groups(n_model)
    k, residual = next((k, g) for k, g in enumerate(groups) if g.residual)
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.rand(1, 3, 64, 64, generator=gen), torch.zeros(0, 6)) for _ in range(2)]

    def loss(out, t):
        return sum((p.float() ** 2).mean() for p in out[1])

    scores = weight_taylor_scores(n_model, groups, batches, loss)
    assert [len(s) for s in scores] == [g.channels for g in groups]
    modules = dict(n_model.named_modules())
    owned = []
    for mem in residual.members:
        sl = slice(mem.offset, mem.offset + residual.channels)
        owned += [(modules[mem.conv].weight, sl, 0), (modules[mem.bn].weight, sl, 0), (modules[mem.bn].bias, sl, 0)]
    owned += [(modules[c].weight, slice(off, off + residual.channels), 1) for c, off in residual.consumers
              if modules[c].weight.shape[1] > 1]
    params = list({id(p): p for p, _, _ in owned}.values())
    summed = {id(p): torch.zeros_like(p) for p in params}
    for x, _ in batches:
        for p in n_model.parameters():
            p.requires_grad_(True)
        for p, g in zip(params, torch.autograd.grad(loss(n_model(x), None), params)):
            summed[id(p)] += g
    layers = []
    for p, sl, dim in owned:
        imp = (p * summed[id(p)]).detach().abs()
        imp = imp[sl] if dim == 0 else imp[:, sl].transpose(0, 1)
        layers.append(imp.reshape(residual.channels, -1).sum(1))
    by_hand = torch.stack(layers).mean(0)
    assert torch.allclose(scores[k], by_hand / by_hand.mean(), rtol=1e-4, atol=1e-6)
    assert scores[k].mean().item() == pytest.approx(1.0, abs=1e-5)
    bn_only = taylor_scores(n_model, groups, batches, loss)[k]
    assert not torch.allclose(scores[k], bn_only / bn_only.mean())  # another criterion than the default


def test_taylor_score_weights_prunes_other_channels_and_says_so(tmp_path, n_model):
    res = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320), _search_data(n_model),
                      create("taylor", allocation="uniform", taylor_score="weights"))
    bn = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320), _search_data(n_model),
                     create("taylor", allocation="uniform"))
    assert [len(v) for v in res.keep.values()] == [len(v) for v in bn.keep.values()]  # same widths (uniform)
    assert any(not torch.equal(res.keep[i], bn.keep[i]) for i in res.keep)  # other channels
    assert_rebuilds(res.model)
    assert "--taylor-score weights" in res.method.flags(res.settings)
    assert "--taylor-score" not in bn.method.flags(bn.settings)
