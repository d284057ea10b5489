"""prune.py's other methods: l1, eagleeye, layer, layer+slim, unstructured, and FLOPs targets. Each result rebuilds
from its yaml, lands on its FLOPs target, empties no layer, and reports the scores of the model it saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import finetune
import prune
from conftest import assert_one_line_error, make_dataset, run_script, shared_path
from helpers import assert_no_empty_layer, assert_rebuilds, raw_outputs, save_model, spread_gammas, tiny_args
from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, load_model
from utils.pruning.flops import ChannelCost
from utils.pruning.graph import build_groups
from utils.pruning.l1 import filter_norms, l1_scores
from utils.pruning.layer import residual_blocks
from utils.pruning.methods import create
from utils.pruning.pruner import PruneSettings, prune_model
from utils.pruning.selection import kept_width
from utils.pruning.surgery import prune_channels
from utils.torch_utils import count_params, model_flops

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def n_model():
    torch.manual_seed(0)
    return spread_gammas(DetectionModel("yolov5n.yaml", nc=3))


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5s-ghost.yaml"])
def test_channel_cost_matches_the_profiled_pruned_model(cfg):
    m = DetectionModel(cfg, nc=80).eval()
    groups = build_groups(m)
    cost = ChannelCost(m, groups, 320)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        keep = {k: torch.randperm(x.channels, generator=g)[:int(torch.randint(1, x.channels + 1, (1,), generator=g))]
                for k, x in enumerate(groups)}
        pruned = prune_channels(m, keep, groups)
        assert cost.gflops([len(keep[k]) for k in range(len(groups))]) == pytest.approx(model_flops(pruned, 320),
                                                                                        rel=2e-3)
    assert cost.gflops(cost.full) == pytest.approx(model_flops(m, 320), rel=1e-9)


@pytest.mark.parametrize("method", ["slim", "l1", "layer+slim"])
def test_flops_target_is_met(n_model, method):
    res = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320), method=create(method, layers=2))
    ratio = model_flops(res.model, 320) / model_flops(n_model, 320)
    assert 0.48 <= ratio <= 0.5 + 1e-3  # the smallest percent at or under the target
    assert_no_empty_layer(res.model)
    assert_rebuilds(res.model)


def test_uniform_allocation_cuts_every_group_by_one_share(tmp_path, n_model):
    """--allocation uniform: every group keeps its own best channels, the same share of each, at the FLOPs target;
    the global ranking of the same scores gives the groups different shares."""
    groups = build_groups(n_model)
    scores = l1_scores(n_model, groups)
    res = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320), method=create("l1", allocation="uniform"))
    assert 0.48 <= model_flops(res.model, 320) / model_flops(n_model, 320) <= 0.5 + 1e-3
    share = res.details["percent_used"]
    for k, g in enumerate(res.groups):
        assert len(res.keep[k]) == kept_width(g.channels, share)
        assert res.keep[k].tolist() == scores[k].topk(len(res.keep[k])).indices.sort().values.tolist()
    assert_rebuilds(res.model)
    glob = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320), method="l1")
    assert len({round(len(glob.keep[k]) / g.channels, 2) for k, g in enumerate(glob.groups)}) > 5
    w = save_model(n_model, tmp_path / "n.pt")
    rec = prune.main(["--weights", str(w), "--method", "l1", "--percent", "0.5", "--allocation", "uniform",
                      "--imgsz", "64", "--project", str(tmp_path / "p")])
    assert rec["command"].endswith("--method l1 --percent 0.5 --allocation uniform")
    assert [x["kept"] for x in rec["layers"]] == [kept_width(x["channels"], 0.5) for x in rec["layers"]]
    assert "allocation uniform" in (md := (Path(rec["save_dir"]) / "report.md").read_text())
    assert "group score" not in md  # l1 ignores --group-score, so its report does not name one


def test_max_layer_percent_caps_what_the_global_ranking_takes_from_one_group(tmp_path, n_model):
    """--max-layer-percent P: the global ranking still decides, but no group keeps fewer than kept_width(n, P), the
    groups it alone protects are not reported as clamped, and the FLOPs target is still met by cutting elsewhere."""
    from utils.pruning.selection import select_channels

    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.arange(10.0, 22.0)]  # the ranking empties group 0 first
    keep, clamped = select_channels(scores, 0.25, max_share=0.5)
    assert keep[0].tolist() == [2, 3] and len(keep[1]) == 12 and clamped == []
    assert select_channels(scores, 0.25)[0][0].tolist() == [3]  # uncapped: min_channels 1 and clamped
    assert select_channels(scores, 0.25)[1] == [0]
    free = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320), method="l1")
    capped = prune_model(n_model, PruneSettings(flops_target=0.5, imgsz=320),
                         method=create("l1", max_layer_percent=0.4))
    assert min(len(free.keep[k]) / g.channels for k, g in enumerate(free.groups)) < 0.6  # the cap binds
    for k, g in enumerate(capped.groups):
        assert len(capped.keep[k]) >= kept_width(g.channels, 0.4)
    assert 0.48 <= model_flops(capped.model, 320) / model_flops(n_model, 320) <= 0.5 + 1e-3
    assert capped.details["percent_used"] > free.details["percent_used"]  # more taken from the uncapped groups
    assert_rebuilds(capped.model)
    w = save_model(n_model, tmp_path / "n.pt")
    rec = prune.main(["--weights", str(w), "--method", "slim", "--percent", "0.5", "--max-layer-percent", "0.6",
                      "--imgsz", "64", "--project", str(tmp_path / "p")])
    assert rec["command"].endswith("--method slim --percent 0.5 --max-layer-percent 0.6")
    assert all(x["kept"] >= kept_width(x["channels"], 0.6) for x in rec["layers"])
    assert "no layer losing more than 0.6" in (Path(rec["save_dir"]) / "report.md").read_text()


def test_report_names_the_group_score_only_where_it_is_used():
    s = {"method": "slim", "percent": 0.5, "threshold": 0.1, "safe_percent": 0.8, "group_score": "mean",
         "skip_shortcut": False, "min_channels": 8, "round_to": 1}
    assert "group score `mean`, skip shortcut" in create("slim", group_score="mean").criterion(s)[0]
    for name in ("l1", "taylor"):
        assert "group score" not in " ".join(create(name).criterion({**s, "method": name, "calib_batches": 8}))


def test_l1_scores_are_filter_norms_over_the_group_mean(n_model):
    groups = build_groups(n_model)
    modules = dict(n_model.named_modules())
    residual = next(g for g in groups if g.residual)
    k = groups.index(residual)
    by_hand = sum(modules[m.conv].weight[m.offset:m.offset + residual.channels].abs().sum((1, 2, 3))
                  for m in residual.members)
    assert torch.allclose(filter_norms(n_model, groups)[k], by_hand.detach())
    assert torch.allclose(l1_scores(n_model, groups)[k], (by_hand / by_hand.mean()).detach())
    res = prune_model(n_model, PruneSettings(percent=0.4), method="l1")
    assert res.clamped == [] and sum(len(v) for v in res.keep.values()) == pytest.approx(0.6 * sum(
        g.channels for g in groups), abs=1)
    assert_rebuilds(res.model)


def test_layer_removes_the_lowest_gamma_bottlenecks(n_model):
    blocks = residual_blocks(n_model)
    assert len(blocks) == 1 + 2 + 3 + 1  # yolov5n's backbone C3s
    lowest = sorted(blocks, key=lambda b: b.score)[:2]
    res = prune_model(n_model, method=create("layer", layers=2))
    assert [b["name"] for b in res.details["removed_blocks"]] == sorted(b.name for b in lowest)
    ref = _identity_blocks(n_model, lowest)  # the same model with those blocks passing x through
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(raw_outputs(res.model, x), raw_outputs(ref, x)))
    assert sum(len(layer.m) for layer in res.model.model if hasattr(layer, "m") and hasattr(layer, "cv3")) == \
        sum(len(layer.m) for layer in n_model.model if hasattr(layer, "m") and hasattr(layer, "cv3")) - 2
    assert_rebuilds(res.model)


def _identity_blocks(model: nn.Module, blocks) -> nn.Module:
    from copy import deepcopy

    out = deepcopy(model)
    for b in blocks:
        out.model[b.layer].m[b.index] = nn.Identity()
    return out


def test_unstructured_sparsity_is_in_the_file_and_survives_finetuning(tmp_path, n_model):
    data = make_dataset(tmp_path / "data", n=8, nc=3, size=(64, 80))
    w = save_model(n_model, tmp_path / "n.pt")
    rec = prune.main(["--weights", str(w), "--method", "unstructured", "--percent", "0.6", "--imgsz", "64",
                      "--project", str(tmp_path / "p")])
    out = Path(rec["save_dir"])
    saved = load_model(out / "pruned.pt")
    convs = [m.weight for m in saved.modules() if isinstance(m, nn.Conv2d)]
    counted = sum(int((c == 0).sum()) for c in convs) / sum(c.numel() for c in convs)
    assert rec["settings"]["zero_share"] == pytest.approx(counted, abs=1e-9)
    assert counted == pytest.approx(0.6, abs=1e-3)
    assert count_params(saved) == count_params(n_model)
    assert "do not make dense kernels faster" in (out / "report.md").read_text()
    args = [a for a in tiny_args(tmp_path, data, "--noplots", epochs=1) if a not in ("--cfg", "yolov5n.yaml")]
    ft = finetune.main(["--weights", str(out / "pruned.pt"), *args, "--name", "ft"])
    tuned = load_model(ft["last"])
    for a, b in zip(convs, [m.weight for m in tuned.modules() if isinstance(m, nn.Conv2d)]):
        assert torch.all(b[a == 0] == 0)  # every pruned weight is still zero
    assert not torch.equal(convs[0], [m.weight for m in tuned.modules() if isinstance(m, nn.Conv2d)][0])  # it trained


def test_ghost_prunes_by_l1_and_finetunes(tmp_path):
    torch.manual_seed(0)
    m = spread_gammas(DetectionModel("yolov5s-ghost.yaml", nc=3))
    data = make_dataset(tmp_path / "data", n=8, nc=3, size=(64, 80))
    w = save_model(m, tmp_path / "g.pt")
    rec = prune.main(["--weights", str(w), "--method", "l1", "--flops-target", "0.5", "--imgsz", "64",
                      "--project", str(tmp_path / "p")])
    assert rec["after"]["GFLOPs"] / rec["before"]["GFLOPs"] == pytest.approx(0.5, abs=0.02)
    args = [a for a in tiny_args(tmp_path, data, "--noplots", epochs=1) if a not in ("--cfg", "yolov5n.yaml")]
    ft = finetune.main(["--weights", str(Path(rec["save_dir"]) / "pruned.pt"), *args, "--name", "ft"])
    assert count_params(load_model(ft["last"])) == rec["after"]["params"]


def test_eagleeye_on_the_upstream_fixture(tmp_path, shapes_yaml):
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    rec = prune.main(["--weights", str(w), "--method", "eagleeye", "--flops-target", "0.6", "--candidates", "4",
                      "--calib-batches", "2", "--batch-size", "16", "--data", str(shapes_yaml), "--imgsz", "256",
                      "--workers", "0", "--project", str(tmp_path / "p")])
    s, out = rec["settings"], Path(rec["save_dir"])
    assert rec["after"]["GFLOPs"] / rec["before"]["GFLOPs"] == pytest.approx(0.6, abs=0.6 * 0.02)
    cands = s["candidates"]
    assert len(cands) == 4 and all(c["gflops"] == pytest.approx(s["target_GFLOPs"], rel=0.02) for c in cands)
    # the paper's point: inherited BN statistics misjudge sub-nets; recomputed ones score them higher
    assert sum(c["score_adaptive"] for c in cands) > sum(c["score_inherited"] for c in cands)
    best = cands[s["best"]]
    assert best["score_adaptive"] == max(c["score_adaptive"] for c in cands)
    saved = load_model(out / "pruned.pt")
    assert_no_empty_layer(saved)
    assert_rebuilds(saved.float())
    opt = prune.parse_opt(["--weights", str(w), "--method", "eagleeye", "--flops-target", "0.6", "--calib-batches",
                           "2", "--batch-size", "16", "--data", str(shapes_yaml), "--imgsz", "256", "--workers", "0"])
    from utils.data import check_dataset

    score = prune.search_data(check_dataset(str(shapes_yaml), splits=()), opt, saved).score
    assert score(saved.float()) == pytest.approx(best["score_adaptive"], abs=0.01)  # stored in fp16
    assert (out / "candidates.png").stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["settings"]["best"] == s["best"]
    assert load_checkpoint(out / "pruned.pt")["prune"]["method"] == "eagleeye"


@pytest.mark.parametrize("args,needle", [
    (["--method", "eagleeye", "--flops-target", "0.5"], "--data"),
    (["--method", "eagleeye"], "--flops-target"),
    (["--method", "layer"], "--layers"),
    (["--method", "layer", "--layers", "99"], "residual bottlenecks"),
    (["--method", "unstructured", "--flops-target", "0.5"], "--flops-target"),
    (["--method", "l1", "--flops-target", "1.5"], "--flops-target"),
    (["--method", "l1", "--percent", "auto", "--allocation", "uniform"], "--allocation global"),
    (["--method", "eagleeye", "--flops-target", "0.5", "--allocation", "uniform"], "ranked methods"),
    (["--method", "l1", "--percent", "0.5", "--max-layer-percent", "0"], "(0, 1]"),
    (["--method", "l1", "--percent", "0.5", "--allocation", "uniform", "--max-layer-percent", "0.8"], "caps"),
    (["--method", "eagleeye", "--flops-target", "0.5", "--max-layer-percent", "0.8"], "ranked methods"),
    (["--method", "l1", "--flops-target", "0.05", "--max-layer-percent", "0.5"], "the most --max-layer-percent 0.5"),
])
def test_bad_method_settings_are_one_line(tmp_path, n_model, args, needle):
    w = save_model(n_model, tmp_path / "n.pt")
    r = run_script("prune.py", "--weights", str(w), *args, "--imgsz", "64", "--project", str(tmp_path / "p"))
    assert_one_line_error(r, needle)
    assert not any((tmp_path / "p").glob("*/pruned.pt"))


def test_an_option_the_method_cannot_use_is_a_one_line_error():
    """--group-score (slim's |gamma| reduction) with taylor, --taylor-score with l1, and --allocation with a method
    that sizes layers itself would change nothing: each stops with one line instead of a cut that ignored it."""
    assert_one_line_error(run_script("prune.py", "--weights", "x.pt", "--method", "taylor", "--group-score", "mean"),
                          "--group-score", "--method slim", "--method taylor")
    assert_one_line_error(run_script("prune.py", "--weights", "x.pt", "--method", "l1", "--taylor-score", "weights"),
                          "--taylor-score", "--method taylor", "--method l1")
    assert_one_line_error(run_script("prune.py", "--weights", "x.pt", "--method", "eagleeye", "--flops-target", "0.5",
                                     "--allocation", "uniform"), "--allocation uniform", "--method eagleeye")
