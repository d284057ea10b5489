"""slim.py end to end on a tiny dataset (every stage runs, the summary holds their figures) and its recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slim
from conftest import ROOT, make_dataset, shared_path
from helpers import read_csv
from utils.errors import UserError
from utils.files import yaml_load
from utils.pruning.selection import kept_width

TINY = ["--imgsz", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def test_pipeline_runs_every_stage_and_summarises(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, nc=2, size=(64, 80))
    out = slim.main(["--data", str(data), *TINY, "--epochs", "1", "--sparse-epochs", "1", "--finetune-epochs", "1",
                     "--percent", "0.4", "--kd", "--sparse-kd", "--polarize", "1.2", "--polarize-scope", "global",
                     "--project", str(tmp_path / "runs")])
    rows = {r["stage"]: r for r in out["rows"]}
    assert list(rows) == ["base", "sparse", "pruned", "finetuned", "finetuned + KD"]
    assert rows["pruned"]["params"] == rows["finetuned"]["params"] < rows["sparse"]["params"]
    assert rows["base"]["params"] == rows["sparse"]["params"]
    assert all(r["b1_ms"] > 0 for r in rows.values())
    run_dir = Path(tmp_path / "runs" / "exp")
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["recipe"] == "demo" and saved["options"]["base_optimizer"] == "AdamW"  # the default recipe's
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
    assert float(sparse_cmd[sparse_cmd.index("--gamma-lr") + 1]) == 100  # from demo.yaml
    assert float(read_csv(run_dir / "sparse" / "results.csv")[0]["train/kd_loss"]) > 0


@pytest.mark.parametrize("recipe,method,cap", [("l1", "l1", None), ("taylor", "taylor", "0.75")])
def test_recipe_prunes_a_given_base_to_its_gflops_target(tmp_path, recipe, method, cap):
    """The l1 and taylor recipes on a trained base: no base or sparse stage, prune.py --method m --flops-target 0.5
    (taylor: --max-layer-percent 0.75, and every layer keeps a quarter), and the fine-tuned model has about half the
    base's GFLOPs."""
    data = make_dataset(tmp_path / "data", n=8, nc=6, size=(64, 80))  # the fixture's 6 classes
    base = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    out = slim.main(["--recipe", recipe, "--weights", str(base), "--data", str(data), *TINY, "--finetune-epochs", "1",
                     "--project", str(tmp_path / "runs")])
    rows = {r["stage"]: r for r in out["rows"]}
    assert list(rows) == ["base", "pruned", "finetuned"]
    assert 0.4 < rows["finetuned"]["GFLOPs"] / rows["base"]["GFLOPs"] <= 0.55
    commands = (tmp_path / "runs" / "exp" / "commands.sh").read_text().splitlines()
    assert [c.split()[1] for c in commands] == ["prune.py", "finetune.py", "val.py"]
    cut = commands[0].split()
    assert cut[cut.index("--method") + 1] == method and cut[cut.index("--flops-target") + 1] == "0.5"
    assert "--percent" not in cut
    assert (cut[cut.index("--max-layer-percent") + 1] if "--max-layer-percent" in cut else None) == cap
    assert "--allocation" not in cut  # both rank globally
    if cap:
        report = json.loads((tmp_path / "runs" / "exp" / "prune" / "report.json").read_text())
        assert all(x["kept"] >= kept_width(x["channels"], float(cap)) for x in report["layers"])


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (ROOT / "data" / "recipes").glob("*.yaml")))
def test_every_recipe_parses_and_the_command_line_wins(recipe):
    settings = yaml_load(ROOT / "data" / "recipes" / f"{recipe}.yaml")
    opt = slim.parse_opt(["--recipe", recipe, "--data", "d.yaml", "--pretrained", "w.pt", "--finetune-epochs", "3"])
    assert opt.finetune_epochs == 3 and opt.recipe == recipe
    assert all(getattr(opt, k) == v for k, v in settings.items() if k not in ("finetune_epochs", "data"))
    for f in (v for k, v in settings.items() if k.endswith(("hyp", "data"))):
        assert (ROOT / f).is_file(), f


def test_recipe_mistakes_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"no such recipe \(in data/recipes/: demo, demo-long, l1, slim, taylor"):
        slim.parse_opt(["--recipe", "fast"])
    with pytest.raises(UserError, match="recipe l1 needs --data"):
        slim.parse_opt(["--recipe", "l1"])
    with pytest.raises(UserError, match="recipe l1 needs a base: --pretrained"):
        slim.parse_opt(["--recipe", "l1", "--data", "d.yaml"])
    base = ["--recipe", "taylor", "--data", "d.yaml", "--pretrained", "w.pt"]  # cut flags prune.py would refuse
    with pytest.raises(UserError, match="--method nope: no such prune.py method"):  # stop before the base trains
        slim.parse_opt([*base, "--method", "nope"])
    with pytest.raises(UserError, match="--max-layer-percent caps the global ranking"):
        slim.parse_opt([*base, "--allocation", "uniform"])  # the recipe's cap with a uniform cut
    with pytest.raises(UserError, match="--max-layer-percent 0.75 applies to the ranked methods"):
        slim.parse_opt([*base, "--method", "eagleeye"])
    f = tmp_path / "mine.yaml"
    f.write_text("data: d.yaml\ncfg: yolov5n.yaml\nsparse-epochs: 3\nfinetune_epochs: 2\n")
    with pytest.raises(UserError, match="unknown setting sparse-epochs"):
        slim.parse_opt(["--recipe", str(f)])
    f.write_text("data: d.yaml\ncfg: yolov5n.yaml\nsparse_epochs: 3\n")
    assert slim.parse_opt(["--recipe", str(f)]).sparse_epochs == 3
