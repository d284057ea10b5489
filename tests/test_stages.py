"""utils/stages.py: the stage cache, resume and argument checks that slim.py and benchmarks/compare.py run on."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
import torch.nn as nn

from conftest import ROOT
from utils.checkpoint import save_checkpoint
from utils.errors import UserError
from utils.files import yaml_load, yaml_save
from utils.stages import Pipeline


def _fake_stage(calls: list):
    def main(argv):
        calls.append(argv)
        return {"weights": "w.pt", "argv": argv}
    return main


def test_stage_cache_resume_and_other_arguments(tmp_path):
    """Pipeline.stage without training: cached when the argv matches (--workers/--device aside), one line when it
    does not, and an interrupted training run (last.pt with an optimizer) resumed after a check of its opt.yaml."""
    p = Pipeline(Namespace(project=str(tmp_path), name="x", exist_ok=True))
    calls: list = []
    out = ["--project", str(p.dir), "--name"]
    p.plan = {"a": 0, "run": 3}
    first = p.stage("s.py", _fake_stage(calls), ["--epochs", "3", *out, "a", "--workers", "8"])
    assert p.stage("s.py", _fake_stage(calls), ["--epochs", "3", *out, "a", "--workers", "0"]) == first
    assert len(calls) == 1 and json.loads((p.dir / "a" / "stage.json").read_text())["record"] == first
    with pytest.raises(UserError, match=r"x/a was run with other arguments \(--epochs '3', now '4'\)"):
        p.stage("s.py", _fake_stage(calls), ["--epochs", "4", *out, "a"])

    run = p.dir / "run"
    hyp = ROOT / "data" / "hyps" / "hyp.small.yaml"
    yaml_save(run / "opt.yaml", {"epochs": 3, "hyp": None, "seed": 0, "resume": False, "exist_ok": True})
    yaml_save(run / "hyp.yaml", yaml_load(hyp))
    save_checkpoint({"model": nn.Conv2d(1, 1, 1), "optimizer": {"state": {}}, "epoch": 1}, run / "weights" / "last.pt")
    argv = ["--epochs", "3", "--hyp", str(hyp), "--seed", "0", *out, "run", "--exist-ok", "--workers", "0"]
    with pytest.raises(UserError, match="holds a training run with --seed 0, not '1'"):
        p.stage("train.py", _fake_stage(calls), [*argv[:5], "1", *argv[6:]])
    p.stage("train.py", _fake_stage(calls), argv, epochs=3)
    assert calls[-1] == ["--resume", str(run / "weights" / "last.pt"), "--workers", "0"]
    assert json.loads((run / "stage.json").read_text())["argv"] == argv

    again = p.dir / "again"  # resumed once already: its opt.yaml holds --cfg '' and last.pt as --weights
    yaml_save(again / "opt.yaml", {"cfg": "", "weights": str(again / "weights" / "last.pt"), "resume": True})
    last = again / "weights" / "last.pt"
    save_checkpoint({"model": nn.Conv2d(1, 1, 1), "optimizer": {"state": {}}, "epoch": 2}, last)
    p.stage("train.py", _fake_stage(calls), ["--cfg", "m.yaml", "--weights", "", *out, "again"], epochs=3)
    assert calls[-1] == ["--resume", str(again / "weights" / "last.pt")]


def test_adopted_run_copied_from_another_folder_points_at_its_own_files(tmp_path):
    """A finished training run copied under another --name (compare.py adopting a base) is adopted with the paths
    of its copy: the record written beside the original must not send later stages back to the original folder."""
    p = Pipeline(Namespace(project=str(tmp_path), name="x", exist_ok=True))
    hyp = ROOT / "data" / "hyps" / "hyp.small.yaml"
    orig, copy = tmp_path / "other" / "base", p.dir / "base"
    for run in (orig, copy):  # what `cp -r other/base x/base` leaves, less the stage.json
        yaml_save(run / "opt.yaml", {"epochs": 3, "hyp": None, "seed": 0, "resume": False, "exist_ok": True})
        yaml_save(run / "hyp.yaml", yaml_load(hyp))
        save_checkpoint({"model": nn.Conv2d(1, 1, 1), "epoch": -1}, run / "weights" / "last.pt")
        (run / "results.json").write_text(json.dumps({
            "weights": str(orig / "weights" / "best.pt"), "last": str(orig / "weights" / "last.pt"),
            "data": "data/bccd.yaml", "mAP50-95": 0.5, "hours": 0.1}))
    calls: list = []
    argv = ["--epochs", "3", "--hyp", str(hyp), "--seed", "0", "--project", str(p.dir), "--name", "base"]
    rec = p.stage("train.py", _fake_stage(calls), argv, epochs=3)
    assert not calls  # adopted, not trained
    assert rec["weights"] == str(copy / "weights" / "best.pt") and rec["last"] == str(copy / "weights" / "last.pt")
    assert rec["data"] == "data/bccd.yaml" and rec["mAP50-95"] == 0.5  # what is not a path of the run stays
    assert json.loads((copy / "stage.json").read_text())["record"]["weights"] == rec["weights"]
    orig_rec = Pipeline(Namespace(project=str(tmp_path), name="other", exist_ok=True)).stage(
        "train.py", _fake_stage(calls), [*argv[:7], str(tmp_path / "other"), "--name", "base"], epochs=3)
    assert orig_rec["weights"] == str(orig / "weights" / "best.pt") and not calls  # in place: unchanged
