"""The fast sensitivity analysis (held-out loss, only the layers after a cut run) against the whole-model reference,
the mAP50 analysis it stands in for, and what its files and flags say. Timings: benchmarks/sensitivity_rank.py."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from scipy.stats import spearmanr

import prune
from conftest import make_dataset, shared_path
from helpers import save_model, spread_gammas
from models.yolo import DetectionModel
from utils.checkpoint import load_model
from utils.data import check_dataset
from utils.pruning import sensitivity
from utils.pruning.graph import build_groups
from utils.pruning.l1 import l1_scores
from utils.pruning.methods.sensitivity import Sensitivity
from utils.pruning.pruner import PruneSettings, SearchData
from utils.pruning.selection import keep_top
from utils.pruning.sensitivity import Cuts, Curve, SuffixLoss, choose_ratios, first_changed
from utils.pruning.surgery import prune_channels
from utils.torch_utils import recalibrate_bn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def n_model():
    torch.manual_seed(0)
    return spread_gammas(DetectionModel("yolov5n.yaml", nc=2))


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n batches of 2 random 64x64 images with 3 boxes each: (image in batch, class, x, y, w, h)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.rand(3, 6, generator=g)
        t[:, 0], t[:, 1], t[:, 4:] = torch.tensor([0.0, 1.0, 1.0]), (t[:, 1] * 2).floor(), t[:, 4:] * 0.4 + 0.1
        out.append((torch.rand(2, 3, 64, 64, generator=g), t))
    return out


def test_suffix_loss_equals_the_whole_subnet_recalibrated(n_model):
    """Running only the layers from the first changed one gives what recalibrate_bn and the loss on the whole sub-net
    give, for cuts in the backbone, in residual groups, before a Concat and in the head, in any order."""
    calib, held = [x for x, _ in _batches(2, 1)], _batches(2, 2)
    loss = prune.yolo_loss(3, 2, 64)(n_model)
    groups = build_groups(n_model)
    scores = l1_scores(n_model, groups)
    scorer = SuffixLoss(n_model, calib, held, loss)

    def whole(m: torch.nn.Module) -> float:
        m = deepcopy(m)
        recalibrate_bn(m, calib)
        with torch.no_grad():
            return sum(float(loss(m(x), t)) for x, t in held) / 4

    assert scorer.base == pytest.approx(whole(n_model), rel=1e-6)
    picked = [0, 5, 13, 26, 33, len(groups) - 1, 7]  # the last one moves back: the cached prefix starts again
    starts = []
    for k in picked:
        sub = prune_channels(n_model, keep_top([scores[k]], [groups[k].channels // 2]), [groups[k]])
        starts.append(first_changed(n_model, sub))
        assert scorer(sub) == pytest.approx(whole(sub), rel=1e-5), groups[k].bns[0]
    assert starts[0] == 0 and starts[-2] == len(n_model.model) - 2 and starts == sorted(starts[:-1]) + [starts[-1]]
    assert scorer(deepcopy(n_model)) == scorer.base  # nothing changed: nothing run


def test_loss_drops_are_relative_increases_and_round_trip(tmp_path):
    curves = [Curve(0, "a", 8, [0.25, 0.5], [6, 4], [0.11, 0.13], "loss"),  # +10%, +30%
              Curve(1, "b", 8, [0.25, 0.5], [6, 4], [0.1, 0.1], "loss")]  # unchanged
    assert curves[0].drops(0.1) == pytest.approx([0.1, 0.3])
    assert choose_ratios(curves, 0.1, 0.2) == [0.25, 0.5]
    assert sensitivity.ranking(curves, 0.1) == [("b", 0.0), ("a", pytest.approx(0.2))]
    sensitivity.save_csv(tmp_path / "s.csv", 0.1, curves)
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "group,layer,channels,ratio,kept,loss"
    base, loaded = sensitivity.load_csv(tmp_path / "s.csv")
    assert base == 0.1 and [vars(c) for c in loaded] == [vars(c) for c in curves]  # exact: floats as repr

    # a file from before the loss score (column mAP50, 6 decimals) still loads, as mAP50 curves
    (tmp_path / "old.csv").write_text("group,layer,channels,ratio,kept,mAP50\n0,model.0,16,0.0,16,0.800000\n"
                                      "0,model.0,16,0.5,8,0.700000\n")
    base, (c,) = sensitivity.load_csv(tmp_path / "old.csv")
    assert (base, c.metric, c.scores, c.drops(base)) == (0.8, "mAP50", [0.7], [pytest.approx(0.1)])
    (tmp_path / "bad.csv").write_text("group,layer,channels,ratio,kept,score\n0,model.0,16,0.0,16,0.8\n")
    with pytest.raises(ValueError, match="one of mAP50, loss expected"):
        sensitivity.load_csv(tmp_path / "bad.csv")


def test_the_cli_scores_by_loss_unless_asked_and_says_so(tmp_path, n_model, log_lines):
    data = make_dataset(tmp_path / "data", n=8, nc=2, size=(64, 80))
    w = save_model(n_model, tmp_path / "n.pt")
    args = ["--weights", str(w), "--data", str(data), "--imgsz", "64", "--batch-size", "4", "--workers", "0",
            "--sensitivity", "--ratios", "0.5", "--skip-shortcut"]
    rec = prune.main([*args, "--project", str(tmp_path / "p")])
    csv = (tmp_path / "p" / "exp" / "sensitivity.csv").read_text()
    assert rec["metric"] == "loss" and csv.startswith("group,layer,channels,ratio,kept,loss\n")
    assert any("held-out loss" in x and "relative increase of the held-out loss" in x for x in log_lines)
    assert any("--max-drop 0.05" in x for x in log_lines)

    # the analysis keeps the channels --method sensitivity keeps (filter L1 norms), not slim's |gamma| ranking
    model = load_model(w).float().eval()
    search = prune.search_data(check_dataset(str(data), splits=()), prune.parse_opt(args), model)
    groups = build_groups(model, skip_shortcut=True)[:3]
    _, by_l1 = Sensitivity(ratios=(0.5,)).curves(model, groups, l1_scores(model, groups), PruneSettings(), search)
    assert [c.scores for c in by_l1] == [pytest.approx(c["scores"], rel=1e-6) for c in rec["curves"][:3]]

    # --sensitivity-score map is the mAP50 reference, through the same SearchData
    search = prune.search_data(check_dataset(str(data), splits=()),
                               prune.parse_opt([*args, "--sensitivity-score", "map"]), n_model)
    assert search.sensitivity_score == "map" and not search.held  # no held-out batches loaded for the loss
    search.score = lambda m: 0.5  # the mAP50 scorer's plumbing, not NMS, is what this checks
    groups = build_groups(n_model)[:2]
    base, curves = Sensitivity(max_drop=0.1, ratios=(0.5,)).curves(n_model, groups, l1_scores(n_model, groups),
                                                                    PruneSettings(), search)
    assert base == 0.5 and [c.metric for c in curves] == ["mAP50"] * 2 and [c.scores for c in curves] == [[0.5]] * 2
    with pytest.raises(ValueError, match="--data"):
        Sensitivity().curves(n_model, groups, l1_scores(n_model, groups), PruneSettings(), SearchData())


def test_the_loss_ranks_layers_as_map50_does_on_the_trained_fixture(shapes_yaml):
    """On the trained shapes model at 160, ten layers from stem to head each cut by 3/4: the held-out loss (2
    adaptive-BN batches, 64 images) orders them as mAP50 does (measured 0.90; 0.94 with ratios 0.5 and 0.75)."""
    w = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    model = load_model(w).float().eval()
    opt = prune.parse_opt(["--weights", str(w), "--sensitivity", "--calib-batches", "2", "--batch-size", "16",
                           "--data", str(shapes_yaml), "--imgsz", "160", "--workers", "0"])
    data = prune.search_data(check_dataset(str(shapes_yaml), splits=()), opt, model)
    groups = build_groups(model)
    picked = [groups[i] for i in (0, 1, 3, 6, 13, 19, 26, 33, 40, 46)]
    scores = l1_scores(model, picked)
    ratios = (0.75,)
    base, slow = sensitivity.analyze(model, picked, scores, data.images, data.score, Cuts(ratios))
    base_loss, fast = sensitivity.analyze_loss(model, picked, scores, data.images, data.held, data.loss(model),
                                               Cuts(ratios))
    rho = spearmanr([d for _, d in sorted(sensitivity.ranking(slow, base))],
                    [d for _, d in sorted(sensitivity.ranking(fast, base_loss))])[0]
    assert rho >= 0.7, (rho, sensitivity.ranking(slow, base), sensitivity.ranking(fast, base_loss))
