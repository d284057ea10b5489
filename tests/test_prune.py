"""prune.py and the pruning pipeline: the written yaml rebuilds the saved model (anchors included), the pruned model
equals the soft-pruned original and, where folding is exact, the original with the removed channels' gammas set to 0
(an oracle that shares no code with the fold), percent 0 changes nothing, no layer is emptied, bad percents are one
line, and every kind of checkpoint prunes (ghost, upstream's, already pruned, finetuned)."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import finetune
import prune
import train
from conftest import FIXTURES, assert_one_line_error, make_dataset, run_script, shared_path
from helpers import ODD_ANCHORS, odd_anchors, raw_outputs, save_model, set_odd_anchors, spread_gammas, tiny_args
from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, load_model
from utils.files import yaml_load
from utils.pruning.graph import build_groups
from utils.pruning.pruner import PruneSettings, prune_model
from utils.pruning.surgery import prune_channels, soft_prune
from utils.torch_utils import count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small convs run faster on one thread


@pytest.fixture(scope="module")
def n_model():
    torch.manual_seed(0)
    return spread_gammas(DetectionModel("yolov5n.yaml", nc=3))


@pytest.mark.parametrize("percent", [0.3, 0.6])
def test_pruned_model_equals_soft_pruned_original(n_model, percent):
    res = prune_model(n_model, PruneSettings(percent=percent))
    soft = soft_prune(n_model, res.keep, res.groups)
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    for a, b in zip(raw_outputs(res.model, x), raw_outputs(soft, x)):
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-4
    assert count_params(res.model) < count_params(n_model)


# BN -> channels to remove, chosen by hand where every consumer is a 1x1 conv: there a removed channel's constant
# act(beta) reaches every output pixel, so folding it is exact (a 3x3 consumer's zero padding is not: surgery.py)
BY_HAND = {
    "model.2.cv1.bn": [1, 5], "model.2.m.0.cv2.bn": [1, 5],  # tied by the bottleneck's residual add
    "model.2.cv2.bn": [0, 7],  # into C3's cv3 at concat offset 16
    "model.9.cv1.bn": [3, 64, 127],  # SPPF: through three max-pools into a 4-way concat
    "model.10.bn": [2, 100],  # upsampled into layer 12's concat, and into layer 22's at offset 128
    "model.13.m.0.cv2.bn": [9],  # a bottleneck without shortcut, into cv3
    "model.23.cv3.bn": [0, 200],  # into Detect's conv, which has a bias and no BN
}


def _every_output(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's output, then Detect's raw per-level outputs: the head alone hides much of a random model's
    inner signal (a removed channel in layer 2 moves its own layer by 0.07 and the outputs by 2e-5 here)."""
    outs = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: outs.append(out)) for m in model.model[:-1]]
    try:
        raw = raw_outputs(model, x)
    finally:
        for h in hooks:
            h.remove()
    return [*outs, *raw]


def test_pruned_model_equals_the_original_with_those_gammas_zeroed(n_model):
    """The oracle shares no code with the fold: the unpruned model with the removed channels' gamma set to 0 outputs
    exactly what their constant act(beta) contributes, which the pruned model must reproduce through its folds."""
    groups = build_groups(n_model)
    keep = {}
    for k, g in enumerate(groups):
        if set(g.bns) & set(BY_HAND):
            assert set(g.bns) <= set(BY_HAND) and all(m.offset == 0 for m in g.members)
            keep[k] = [c for c in range(g.channels) if c not in BY_HAND[g.bns[0]]]
    pruned = prune_channels(n_model, keep, groups)
    oracle = copy.deepcopy(n_model)
    with torch.no_grad():
        for name, channels in BY_HAND.items():
            oracle.get_submodule(name).weight[channels] = 0
            assert pruned.get_submodule(name).num_features == n_model.get_submodule(name).num_features - len(channels)
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    out, ref, unpruned = (_every_output(m, x) for m in (pruned, oracle, n_model))
    compared = 0
    for i, (a, b) in enumerate(zip(out, ref)):
        if a.shape == b.shape:  # layers 10-12, 22 and 23 output fewer channels
            assert (a - b).abs().max() < 1e-5 * max(1.0, b.abs().max()), i  # float32 rounding: ~5e-7 measured
            compared += 1
    assert compared == len(ref) - 5
    for i in (2, 9, 13, len(ref) - 1):  # layers that read removed channels, and the P5 output: the gammas mattered
        assert (unpruned[i] - ref[i]).abs().max() > 1e-4, i


def test_percent_zero_changes_nothing(n_model):
    res = prune_model(n_model, PruneSettings(percent=0.0))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert count_params(res.model) == count_params(n_model)
    assert all(torch.equal(a, b) for a, b in zip(raw_outputs(res.model, x), raw_outputs(n_model, x)))


def test_safe_percent_empties_no_layer_and_beyond_it_min_channels_holds(n_model):
    safe = prune_model(n_model, PruneSettings(percent=0.0)).safe_percent
    at = prune_model(n_model, PruneSettings(percent=safe))
    assert at.clamped == []  # the threshold alone left every group a channel
    assert min(x["kept"] for x in at.layers) >= 1
    beyond = prune_model(n_model, PruneSettings(percent=min(0.95, safe + 0.2), min_channels=2))
    assert beyond.clamped
    assert min(x["kept"] for x in beyond.layers) >= 1
    assert all(len(beyond.keep[k]) >= min(2, beyond.groups[k].channels) for k in beyond.keep)


def test_round_to_multiples(n_model):
    res = prune_model(n_model, PruneSettings(percent=0.5, round_to=8))
    for k, g in enumerate(res.groups):
        kept = len(res.keep[k])
        assert kept % 8 == 0 or kept == g.channels


def test_cli_writes_a_yaml_that_rebuilds_the_checkpoint(tmp_path, n_model):
    # the checkpoint's anchors, not the yaml's
    w = save_model(set_odd_anchors(copy.deepcopy(n_model)), tmp_path / "n.pt")
    rec = prune.main(["--weights", str(w), "--percent", "0.4", "--imgsz", "128", "--project", str(tmp_path / "p")])
    out = Path(rec["save_dir"])
    assert {p.name for p in out.iterdir()} >= {"pruned.pt", "pruned.yaml", "report.md", "report.json", "channels.png"}
    assert yaml_load(out / "pruned.yaml")["anchors"] == ODD_ANCHORS
    rebuilt = DetectionModel(str(out / "pruned.yaml"))
    saved = load_model(out / "pruned.pt")
    assert odd_anchors(rebuilt) and odd_anchors(saved)  # before load_state_dict copies the buffer over
    assert count_params(rebuilt) == count_params(saved) == rec["after"]["params"] < rec["before"]["params"]
    rebuilt.load_state_dict(saved.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 96)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(raw_outputs(rebuilt, x), raw_outputs(saved, x)))
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["params"] == count_params(saved)
    assert [x["kept"] for x in report["layers"]] == [m.num_features for m in saved.modules()
                                                      if isinstance(m, nn.BatchNorm2d)]
    assert yaml_load(out / "pruned.yaml")["exact_widths"] is True


@pytest.mark.parametrize("percent", ["1.0", "-0.1", "abc", "1.5"])
def test_bad_percent_is_one_line(tmp_path, percent):
    r = run_script("prune.py", "--weights", "yolov5n.pt", "--percent", percent, "--project", str(tmp_path))
    assert_one_line_error(r, "--percent")
    assert not any(tmp_path.iterdir())


def test_bare_last_pt_resolves_to_the_newest_run(tmp_path, n_model, monkeypatch, log_lines):
    monkeypatch.chdir(tmp_path)
    for k, name in enumerate(("exp", "exp2")):
        w = tmp_path / "runs" / "train-sparse" / name / "weights"
        w.mkdir(parents=True)
        save_model(n_model, w / "last.pt")
        os.utime(w / "last.pt", (time.time() - 100 + 50 * k,) * 2)
    rec = prune.main(["--weights", "last.pt", "--percent", "0.2", "--imgsz", "64", "--project", str(tmp_path / "p")])
    assert Path(rec["weights"]) == (tmp_path / "runs/train-sparse/exp2/weights/last.pt").resolve()
    assert any("using the newest last.pt" in x for x in log_lines)
    r = run_script("prune.py", "--weights", "nothere.pt", "--project", str(tmp_path / "q"))
    assert_one_line_error(r, "nothere.pt")


def test_ghost_model_prunes_and_rebuilds(tmp_path):
    torch.manual_seed(0)
    m = spread_gammas(DetectionModel("yolov5s-ghost.yaml", nc=3))
    res = prune_model(m, PruneSettings(percent=0.4))
    rebuilt = DetectionModel(res.model.yaml)
    rebuilt.load_state_dict(res.model.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(raw_outputs(rebuilt, x), raw_outputs(res.model, x)))
    soft = soft_prune(m, res.keep, res.groups)
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(raw_outputs(res.model, x), raw_outputs(soft, x)))
    assert count_params(res.model) < 0.8 * count_params(m)


def test_upstream_fixture_prunes_and_evaluates(tmp_path, shapes_yaml):
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    # without sparse training every gamma carries signal: 2% still costs a few points, 10% more than half (measured)
    rec = prune.main(["--weights", str(w), "--percent", "0.02", "--data", str(shapes_yaml), "--imgsz", "320",
                      "--workers", "0", "--project", str(tmp_path / "p")])
    before, after = rec["before"]["eval"], rec["after"]["eval"]
    assert before["mAP50"] == pytest.approx(0.711, abs=0.01)  # upstream's val.py figure for this file
    assert 0.85 * before["mAP50"] < after["mAP50"] < before["mAP50"]
    assert rec["after"]["params"] < rec["before"]["params"]
    ckpt = load_checkpoint(Path(rec["save_dir"]) / "pruned.pt")
    assert ckpt["model"].names == load_model(w).names and ckpt["model"].yaml["exact_widths"]


def test_coco_fixture_prunes_at_its_safe_percent(tmp_path):
    w = FIXTURES / "yolov5n-coco.pt"
    if not w.exists():
        pytest.skip("../shared absent")
    m = load_model(w)
    res = prune_model(m, PruneSettings(percent=0.0))
    at = prune_model(m, PruneSettings(percent=res.safe_percent))
    assert at.clamped == [] and min(x["kept"] for x in at.layers) >= 1
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    soft = soft_prune(m, at.keep, at.groups)
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(raw_outputs(at.model, x), raw_outputs(soft, x)))


def test_prune_finetune_prune_again(tmp_path, n_model):
    data = make_dataset(tmp_path / "data", n=8, nc=3, size=(64, 80))
    w = save_model(n_model, tmp_path / "n.pt")
    first = prune.main(["--weights", str(w), "--percent", "0.4", "--imgsz", "64", "--project", str(tmp_path / "p")])
    args = [a for a in tiny_args(tmp_path, data, "--noplots", epochs=1) if a not in ("--cfg", "yolov5n.yaml")]
    ft = finetune.main(["--weights", str(Path(first["save_dir"]) / "pruned.pt"), *args, "--name", "ft"])
    tuned = load_model(ft["last"])
    assert count_params(tuned) == first["after"]["params"]
    second = prune.main(["--weights", ft["last"], "--percent", "0.3", "--imgsz", "64",
                         "--project", str(tmp_path / "p")])
    assert second["after"]["params"] < second["before"]["params"] == first["after"]["params"]
    again = DetectionModel(str(Path(second["save_dir"]) / "pruned.yaml"))
    again.load_state_dict(load_model(Path(second["save_dir"]) / "pruned.pt").state_dict(), strict=True)
    trained = train.run(train.parse_opt(["--cfg", str(Path(second["save_dir"]) / "pruned.yaml"), "--weights", "",
                                         *args, "--name", "scratch"]))  # trains from scratch from the yaml
    assert count_params(load_model(trained["last"])) == second["after"]["params"]


def test_selection_removes_exactly_the_percent_even_when_scores_tie():
    from utils.pruning.selection import select_channels

    scores = [torch.ones(10), torch.ones(6), torch.tensor([0.5, 2.0, 0.1, 3.0])]
    keep, clamped = select_channels(scores, 0.4, min_channels=1)
    assert sum(len(k) for k in keep.values()) == 20 - 8
    assert keep[2].tolist() == [1, 3]  # its two lowest go first
    assert clamped == []
    keep, clamped = select_channels(scores, 0.9, min_channels=2)  # the ranking alone empties groups 0 and 1
    assert clamped == [0, 1] and all(len(k) >= 2 for k in keep.values())
