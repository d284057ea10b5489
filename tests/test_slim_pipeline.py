"""benchmarks/slim_pipeline.py end to end on a tiny dataset: every stage runs and the summary holds their figures."""

from __future__ import annotations

import json

import pytest
import sys
from pathlib import Path

from conftest import ROOT, make_dataset
from test_train import read_csv

sys.path.insert(0, str(ROOT / "benchmarks"))
import slim_pipeline  # noqa: E402


def test_pipeline_runs_every_stage_and_summarises(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, nc=2, size=(64, 80))
    out = slim_pipeline.main(["--data", str(data), "--imgsz", "64", "--batch-size", "4", "--epochs", "1",
                              "--sparse-epochs", "1", "--finetune-epochs", "1", "--percent", "0.4", "--kd",
                              "--sparse-kd", "--polarize", "1.2", "--polarize-scope", "global",
                              "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs")])
    rows = {r["stage"]: r for r in out["rows"]}
    assert list(rows) == ["base", "sparse", "pruned", "finetuned", "finetuned + KD"]
    assert rows["pruned"]["params"] == rows["finetuned"]["params"] < rows["sparse"]["params"]
    assert rows["base"]["params"] == rows["sparse"]["params"]
    assert all(r["b1_ms"] > 0 for r in rows.values())
    run_dir = Path(tmp_path / "runs" / "exp")
    saved = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "compare" / "metrics.json").read_text())
    assert [r["mAP50"] for r in saved["rows"]] == [m["mAP50"] for m in metrics]
    assert (run_dir / "pipeline.png").stat().st_size > 0
    commands = (run_dir / "commands.sh").read_text().splitlines()
    assert [c.split()[1] for c in commands] == ["train.py", "train_sparse.py", "prune.py", "finetune.py",
                                                "finetune.py", "val.py"]
    base = str(run_dir / "base" / "weights" / "best.pt")
    sparse_cmd = commands[1].split()
    assert sparse_cmd[sparse_cmd.index("--teacher") + 1] == base  # distilled from the base model
    assert sparse_cmd[sparse_cmd.index("--polarize-scope") + 1] == "global"
    assert float(read_csv(run_dir / "sparse" / "results.csv")[0]["train/kd_loss"]) > 0


def test_methods_benchmark_compares_at_one_flops_target(tmp_path):
    import methods
    import torch

    from models.yolo import DetectionModel
    from test_prune import _save, _spread_gammas

    data = make_dataset(tmp_path / "data", n=8, nc=2, size=(64, 80))
    torch.manual_seed(0)
    w = _save(_spread_gammas(DetectionModel("yolov5n.yaml", nc=2)), tmp_path / "base.pt")
    out = methods.main(["--weights", str(w), "--data", str(data), "--methods", "l1", "eagleeye", "unstructured",
                        "--flops-target", "0.6", "--candidates", "2", "--calib-batches", "1", "--imgsz", "64",
                        "--batch-size", "4", "--finetune-epochs", "1", "--workers", "0", "--device", "cpu",
                        "--project", str(tmp_path / "runs")])
    rows = {r["method"]: r for r in out["rows"]}
    base = out["base"]
    for m in ("l1", "eagleeye"):
        assert abs(rows[m]["GFLOPs"] / base["GFLOPs"] - 0.6) <= 0.6 * 0.02
    assert rows["unstructured"]["params"] == base["params"]
    assert abs(rows["unstructured"]["zero_share"] - 0.4) < 1e-3
    run_dir = tmp_path / "runs" / "exp"
    metrics = json.loads((run_dir / "compare" / "metrics.json").read_text())
    assert [r["finetuned"]["mAP50"] for r in out["rows"]] == [m["mAP50"] for m in metrics[1:]]
    assert all(r["b1_ms"] > 0 for r in out["rows"])
    commands = (run_dir / "commands.sh").read_text().splitlines()
    assert [c.split()[1] for c in commands] == ["prune.py", "finetune.py"] * 3 + ["val.py"]
    assert "| eagleeye |" in (run_dir / "summary.md").read_text()


def test_methods_benchmark_matches_the_flops_of_a_slim_percent(tmp_path):
    """#8's table: taylor and sensitivity at the FLOPs that slim --percent 0.5 leaves, right after pruning only."""
    import methods
    import torch

    from models.yolo import DetectionModel
    from test_prune import _save, _spread_gammas
    from utils.checkpoint import load_model
    from utils.pruning.pruner import PruneSettings, prune_model
    from utils.torch_utils import model_flops

    data = make_dataset(tmp_path / "data", n=8, nc=2, size=(64, 80))
    torch.manual_seed(0)
    w = _save(_spread_gammas(DetectionModel("yolov5n.yaml", nc=2)), tmp_path / "base.pt")
    out = methods.main(["--weights", str(w), "--data", str(data), "--methods", "slim", "taylor", "sensitivity",
                        "--match-slim-percent", "0.5", "--ratios", "0.5", "--calib-batches", "1", "--imgsz",
                        "64", "--batch-size", "4", "--finetune-epochs", "0", "--workers", "0", "--device", "cpu",
                        "--project", str(tmp_path / "runs")])
    m = load_model(w).float()
    share = model_flops(prune_model(m, PruneSettings(percent=0.5, imgsz=64)).model, 64) / model_flops(m, 64)
    assert out["options"]["flops_target"] == pytest.approx(share, abs=1e-4)
    for r in out["rows"]:
        assert r["GFLOPs"] / out["base"]["GFLOPs"] <= share * 1.01, r["method"]  # GFLOPs are rounded to 4 decimals
        assert "finetuned" not in r
    assert abs(out["rows"][0]["GFLOPs"] / out["base"]["GFLOPs"] - share) < 0.01  # slim lands on its own FLOPs
    commands = (tmp_path / "runs" / "exp" / "commands.sh").read_text()
    assert "--method taylor" in commands and "--method sensitivity" in commands

    # --sensitivity-csv reuses that analysis (no layer x ratio evaluations) and chooses the same model
    csv = tmp_path / "runs" / "exp" / "prune-sensitivity" / "sensitivity.csv"
    again = methods.main(["--weights", str(w), "--data", str(data), "--methods", "sensitivity", "--sensitivity-csv",
                          str(csv), "--match-slim-percent", "0.5", "--ratios", "0.5", "--calib-batches", "1",
                          "--imgsz", "64", "--batch-size", "4", "--finetune-epochs", "0", "--workers", "0",
                          "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", "reuse"])
    assert "--sensitivity-csv" in (tmp_path / "runs" / "reuse" / "commands.sh").read_text()
    first = next(r for r in out["rows"] if r["method"] == "sensitivity")
    assert (again["rows"][0]["params"], again["rows"][0]["GFLOPs"]) == (first["params"], first["GFLOPs"])
