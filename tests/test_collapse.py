"""No silent mAP 0: the collapsed share of a model with chosen gammas, the warning exactly when a cut goes past it,
--percent auto, train_sparse.py's end verdict, and fine-tuning that starts from BN-re-estimated statistics."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import finetune
import prune
import train_sparse
from conftest import ROOT, SHAPES_NAMES, assert_one_line_error, make_dataset, run_script, shared_path
from helpers import read_csv, tiny_args
from models.yolo import DetectionModel
from utils.checkpoint import load_model, save_checkpoint
from utils.dataloaders import create_dataloader
from utils.evaluate import evaluate
from utils.hooks.sparsity import BNSparsity
from utils.pruning.collapse import collapse
from utils.pruning.graph import build_groups
from utils.pruning.pruner import PruneSettings, prune_model
from utils.torch_utils import recalibrate_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def chosen_gammas(share: float, seed: int = 0) -> tuple[DetectionModel, int, int]:
    """yolov5n whose live gammas lie in [0.5, 1.5) and whose collapsed ones (`share` of every group's channels,
    set in every member BN of the group) are 1e-4. Returns (model, collapsed channels, group channels)."""
    torch.manual_seed(seed)
    model = DetectionModel("yolov5n.yaml", nc=3).eval()
    modules = dict(model.named_modules())
    dead = total = 0
    gen = torch.Generator().manual_seed(seed)
    for g in build_groups(model):
        k = int(share * g.channels)
        idx = torch.randperm(g.channels, generator=gen)[:k]
        for m in g.members:
            w = modules[m.bn].weight.data[m.offset:m.offset + g.channels]
            w.copy_(0.5 + torch.rand(g.channels, generator=gen))
            w[idx] = 1e-4
        dead, total = dead + k, total + g.channels
    return model, dead, total


@pytest.fixture(scope="module")
def toy():
    return chosen_gammas(0.3)


def test_collapsed_share_is_the_share_of_chosen_gammas(toy):
    model, dead, total = toy
    res = prune_model(model, PruneSettings(percent=0.0))
    assert res.details["collapsed_share"] == pytest.approx(dead / total)
    assert collapse(res.scores).threshold == pytest.approx(0.01 * torch.quantile(torch.cat(res.scores), 0.9).item())


def test_live_channels_are_counted_exactly_when_the_cut_goes_past_the_collapsed_share(toy):
    model, dead, total = toy
    at = prune_model(model, PruneSettings(percent=dead / total))
    assert at.details["live_removed"] == 0 and at.summary()["removed_share"] == pytest.approx(dead / total)
    past = prune_model(model, PruneSettings(percent=(dead + 5) / total))
    assert past.details["live_removed"] == 5  # the 5 weakest live channels, nothing else


def _prune_cli(tmp_path: Path, model: DetectionModel, *args: str, name: str = "p") -> dict:
    w = tmp_path / "toy.pt"
    save_checkpoint({"model": model.half(), "ema": None, "epoch": -1, "opt": {}}, w)
    model.float()
    return prune.main(["--weights", str(w), "--imgsz", "64", "--project", str(tmp_path), "--name", name, *args])


def test_prune_warns_only_past_the_collapsed_share(tmp_path, toy, log_lines):
    model, dead, total = toy
    _prune_cli(tmp_path, model, "--percent", f"{(dead - 1) / total:.6f}", name="under")
    assert not [x for x in log_lines if "WARNING" in x]
    rec = _prune_cli(tmp_path, model, "--percent", "0.5", name="over")
    warn = [x for x in log_lines if "live channels" in x]
    assert len(warn) == 1 and f"only {dead / total:.1%} had collapsed" in warn[0] and "--polarize" in warn[0]
    saved = json.loads((Path(rec["save_dir"]) / "report.json").read_text())["settings"]
    assert saved["collapsed_share"] == pytest.approx(dead / total) and saved["live_removed"] > 0
    assert "live channels removed" in (Path(rec["save_dir"]) / "report.md").read_text()


def test_percent_auto_cuts_the_collapsed_share(tmp_path, toy):
    model, dead, total = toy
    rec = _prune_cli(tmp_path, model, "--percent", "auto")
    s = rec["settings"]
    assert s["auto"] and s["percent_used"] == pytest.approx(dead / total) and s["live_removed"] == 0
    assert s["group_channels"] - s["group_channels_kept"] == dead


def test_percent_auto_refuses_when_nothing_collapsed(tmp_path):
    torch.manual_seed(0)
    w = tmp_path / "fresh.pt"
    save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=3).half(), "ema": None, "epoch": -1}, w)
    r = run_script("prune.py", "--weights", str(w), "--percent", "auto", "--imgsz", "64", "--project", str(tmp_path))
    assert_one_line_error(r, "--percent auto", "0.0% of the prunable channels have collapsed")
    assert not list(tmp_path.glob("exp*"))
    r = run_script("prune.py", "--weights", str(w), "--percent", "auto", "--method", "eagleeye", "--flops-target",
                   "0.5", "--project", str(tmp_path))
    assert_one_line_error(r, "--percent auto")


def test_prune_with_data_says_when_map_fell_by_more_than_half(tmp_path, log_lines):
    data = make_dataset(tmp_path / "data", n=4, nc=3)
    model, _, _ = chosen_gammas(0.0)
    monkey = {"n": 0}

    def fake_eval(m, loader, names):  # the before/after figures a badly cut model gives
        monkey["n"] += 1
        return {"P": 0.5, "R": 0.5, "mAP50": 0.6 if monkey["n"] == 1 else 0.1, "mAP50-95": 0.3}

    orig, prune.evaluate = prune.evaluate, fake_eval
    try:
        _prune_cli(tmp_path, model, "--percent", "0.3", "--data", str(data))
    finally:
        prune.evaluate = orig
    warn = [x for x in log_lines if "fell by more than half" in x]
    assert len(warn) == 1 and "0.600 -> 0.100" in warn[0]


def _end_state(tmp_path: Path, model: DetectionModel) -> SimpleNamespace:
    return SimpleNamespace(ema=None, bare=model, save_dir=tmp_path)


@pytest.mark.parametrize("share, warns", [(0.6, False), (0.05, True)])
def test_sparse_training_ends_with_the_verdict(tmp_path, log_lines, share, warns):
    model, dead, total = chosen_gammas(share)
    hook = BNSparsity(sr=1e-3)
    hook.bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    hook.history, hook.edges, hook.epochs = [torch.zeros(80).numpy()], torch.linspace(0, 2, 81).numpy(), [-1]
    hook.record = {"budget": 2.0, "median_gamma_start": 1.0}
    hook.on_train_end(_end_state(tmp_path, model))
    rec = json.loads((tmp_path / "sparsity.json").read_text())
    assert rec["collapsed_share"] == pytest.approx(dead / total)
    assert rec["free_percent"] == pytest.approx(min(dead / total, rec["safe_prune_percent"]))
    verdict = [x for x in log_lines if "verdict" in x]
    assert len(verdict) == 1 and f"{dead / total:.1%} of the prunable channels have collapsed" in verdict[0]
    warn = [x for x in log_lines if "To sparsify more" in x]
    assert bool(warn) == warns
    if warns:
        assert "--polarize 1.2" in warn[0]  # the budget sufficed (2.0 > median 1.0) and plain L1 was used


def test_a_real_sparse_run_writes_the_verdict(tmp_path, log_lines):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    rec = train_sparse.run(train_sparse.parse_opt(tiny_args(tmp_path, data, "--sr", "1e-5", "--noplots",
                                                            epochs=1)))
    s = json.loads((Path(rec["weights"]).parents[1] / "sparsity.json").read_text())
    assert s["collapsed_share"] == 0.0 and s["free_percent"] == 0.0  # 1 epoch at sr 1e-5 collapses nothing
    warn = [x for x in log_lines if "To sparsify more" in x]
    assert len(warn) == 1 and "--shrink" in warn[0]  # the budget was far below the median |gamma|


def _subset(tmp_path: Path, n: int) -> Path:
    """A data yaml over the first n train and val images of ../shared/datasets/shapes (list files)."""
    root = shared_path("datasets", "shapes")
    for split in ("train", "val"):
        files = sorted((root / "images" / split).glob("*.jpg"))[:n]
        (tmp_path / f"{split}.txt").write_text("\n".join(map(str, files)) + "\n")
    f = tmp_path / "shapes.yaml"
    f.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "train.txt", "val": "val.txt",
                                 "names": SHAPES_NAMES}))
    return f


@pytest.mark.slow
def test_finetuning_a_pruned_model_starts_from_re_estimated_bn_statistics(tmp_path):
    """upstream's shapes model cut by l1 (live channels go, so its BN statistics no longer fit), then one fine-tuning
    epoch at a learning rate too small to change it: the first validation must read the pruned model's own mAP after
    BN re-estimation (on by default for a pruned checkpoint), not the stale statistics' lower figure."""
    data = _subset(tmp_path, 32)
    prune.main(["--weights", str(shared_path("fixtures", "upstream-yolov5n-shapes.pt")), "--method", "l1",
                "--percent", "0.1", "--imgsz", "256", "--project", str(tmp_path), "--name", "p"])
    pruned = tmp_path / "p" / "pruned.pt"
    hyp = tmp_path / "hyp.yaml"
    base = (ROOT / "data/hyps/hyp.finetune.yaml").read_text()
    hyp.write_text(base.replace("lr0: 0.002", "lr0: 0.000001").replace("warmup_epochs: 0.5", "warmup_epochs: 0"))
    opt = finetune.parse_opt(["--weights", str(pruned), "--data", str(data), "--hyp", str(hyp), "--epochs", "1",
                              "--imgsz", "256", "--batch-size", "8", "--workers", "0", "--device", "cpu",
                              "--project", str(tmp_path), "--name", "ft", "--noplots"])
    assert opt.bn_recal == 8
    rec = finetune.run(opt)
    first = float(read_csv(Path(rec["weights"]).parents[1] / "results.csv")[0]["metrics/mAP_0.5:0.95"])
    model = load_model(pruned, torch.device("cpu")).float()
    val = create_dataloader(str(tmp_path / "val.txt"), 256, 8, 32, rect=True, pad=0.5, workers=0, nc=6)[0]
    stale = evaluate(model, val, model.names).map
    train = create_dataloader(str(tmp_path / "train.txt"), 256, 8, 32, workers=0, nc=6)[0]
    recalibrate_bn(model, [x.float() / 255 for x, *_ in train])
    fresh = evaluate(model, val, model.names).map
    assert fresh > stale + 0.05  # the cut left stale statistics: what the hook is for
    assert first >= fresh - 0.03  # training batches differ from these (mosaic), hence a small tolerance
