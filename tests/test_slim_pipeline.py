"""benchmarks/slim_pipeline.py end to end on a tiny dataset: every stage runs and the summary holds their figures."""

from __future__ import annotations

import json

import sys
from pathlib import Path

from conftest import ROOT, make_dataset
from helpers import read_csv

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

