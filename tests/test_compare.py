"""benchmarks/compare.py (the held-out benchmark harness) and benchmarks/tp_prune.py, on tiny data and a yolov5n at
64 px."""

from __future__ import annotations

import argparse
import json
import math
import sys
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT, make_dataset, shared_path

sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402
import tp_prune  # noqa: E402

from models.yolo import DetectionModel  # noqa: E402
from utils.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from utils.files import yaml_load  # noqa: E402
from utils.pruning.selection import kept_width  # noqa: E402
from utils.stages import flag_values  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402

KEYS = {"method", "target_gflops", "weights", "P", "R", "mAP50", "mAP50-95", "mAP50_square", "mAP50-95_square",
        "params", "GFLOPs", "ms_pt", "ms_ort",
        "seconds", *(f"{k}_ratio" for k in compare.RATIO_KEYS)}


def tiny_data(root: Path) -> Path:
    """make_dataset's rectangles on noisy backgrounds: flat images leave BN variances near zero, and the models
    fine-tuned on them numerically extreme."""
    data = make_dataset(root, n=8, nc=2, size=(64, 80))
    rng = np.random.default_rng(0)
    for f in sorted((root / "images" / "val").glob("*.jpg")):
        im = cv2.imread(str(f)).astype(np.int16) + rng.integers(-100, 100, (64, 80, 3))
        cv2.imwrite(str(f), np.clip(im, 0, 255).astype(np.uint8))
    return data


def tiny_weights(path: Path) -> Path:
    torch.manual_seed(0)
    m = DetectionModel("yolov5n.yaml", nc=2)
    save_checkpoint({"model": m.half(), "ema": None, "epoch": -1, "opt": {}}, path)
    return path


def harness_args(data: Path, weights: Path, project: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--weights", str(weights), "--imgsz", "64", "--batch-size", "4", "--base-epochs",
            "2", "--budget", "2", "--sparse-epochs", "1", "--candidates", "2", "--calib-batches", "1",
            "--latency-runs", "5", "--workers", "0", "--device", "cpu", "--project", str(project), "--name", "t",
            *extra]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, one_thread):
    """One run of the harness with every method (and one curve point): (rows, run folder, argv). The base is
    fine-tuned from a trained yolov5n (6 classes; the nc=2 data gets new Detect outputs): a random one, once
    fine-tuning recalibrates its BN statistics, has activations so large that ONNX Runtime's rounding fails
    export.py's parity check in the latency stage."""
    tmp = tmp_path_factory.mktemp("compare")
    weights = shared_path("fixtures", "upstream-yolov5n-shapes.pt")
    argv = harness_args(tiny_data(tmp / "data"), weights, tmp / "runs", "--curve", "0.7", "--curve-methods", "l1")
    return compare.main(argv), tmp / "runs" / "t", argv


@pytest.mark.slow
def test_every_method_runs_and_reports(bench):
    rows, d, _ = bench
    assert [r["method"] for r in rows] == ["base", *compare.METHODS, "l1"]
    for r in rows:
        assert set(r) == KEYS, r["method"]
        numbers = [v for k, v in r.items() if isinstance(v, (int, float)) and k != "target_gflops"]
        assert all(math.isfinite(v) for v in [*numbers, *r["seconds"].values()]), r
        assert r["ms_pt"] > 0 and r["ms_ort"] > 0 and Path(r["weights"]).is_file()
    base = rows[0]
    assert base["target_gflops"] is None and base["GFLOPs_ratio"] == 1.0
    for r in rows[1:]:
        share = r["GFLOPs"] / base["GFLOPs"]  # val.py's GFLOPs, rounded to 3 decimals: a few % at 0.04 GFLOPs
        assert abs(share - r["target_gflops"]) < 0.1, (r["method"], share)
        assert r["params"] < base["params"]
    assert set(rows[1]["seconds"]) == {"sparse", "prune", "finetune"} and set(rows[-2]["seconds"]) == {"train"}
    assert json.loads((d / "results.json").read_text()) == rows
    md = (d / "results.md").read_text()
    assert "n_base = 2" in md and "Seed 0" in md and "| tp-taylor | 0.5 |" in md
    assert (d / "pareto.png").stat().st_size > 0 and (d / "base.png").stat().st_size > 0
    commands = (d / "commands.sh").read_text().splitlines()
    assert len(commands) == len(list(d.rglob("stage.json"))) == 22  # every stage once, each cached in its folder
    assert commands[0].startswith("python train.py --weights ") and " --patience 20 " in commands[0]
    assert any(c.startswith("python benchmarks/tp_prune.py ") and "--importance taylor" in c for c in commands)
    uniform = json.loads((d / "taylor-uniform-0.5" / "prune" / "report.json").read_text())
    assert uniform["settings"]["method"] == "taylor" and uniform["settings"]["allocation"] == "uniform"
    share = uniform["settings"]["percent_used"]
    assert [x["kept"] for x in uniform["layers"]] == [kept_width(x["channels"], share) for x in uniform["layers"]]
    dense = yaml_load(d / "dense-0.5" / "dense.yaml")
    assert dense["nc"] == 2 and 0 < dense["width_multiple"] < 0.25
    assert "--epochs 4 " in next(c for c in commands if "--name dense-0.5" in c)  # n_base + budget


@pytest.mark.slow
def test_rerun_skips_every_finished_stage(bench, log_lines):
    rows, d, argv = bench
    (d / "base" / "stage.json").unlink()  # as the BCCD base started by hand: a finished run without a stage.json
    stamps = {f: f.stat().st_mtime_ns for f in d.rglob("stage.json")}
    again = compare.main(argv)
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
    assert not any("Starting training" in x for x in log_lines)
    assert sum(x.startswith("pipeline: cached: ") for x in log_lines) == len(stamps) == 21
    assert any("adopting the finished run" in x for x in log_lines)
    assert any("pipeline: [22/22] latency ... " in x and "elapsed, ETA " in x for x in log_lines)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_other_arguments_of_a_finished_stage_stop_with_one_line(bench, capsys):
    _, d, argv = bench
    stamps = {f: f.stat().st_mtime_ns for f in d.rglob("stage.json")}
    with pytest.raises(SystemExit) as e:
        compare.main([*argv, "--budget", "3"])  # the slim fine-tuning would run 2 epochs, not 1
    err = [x for x in capsys.readouterr().err.splitlines() if x]
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith("ERROR: ")
    assert "slim-0.5/finetune was run with other arguments (--epochs '1', now '2')" in err[0]
    assert "another --name" in err[0]
    assert {f: f.stat().st_mtime_ns for f in d.rglob("stage.json")} == stamps


@pytest.mark.slow
def test_base_from_adopts_another_runs_base(bench, log_lines, capsys):
    """--base-from: a run under another --name starts from the first run's finished base (copied, not retrained; its
    paths its own); one whose base arguments differ, or a folder without a finished base, stops with one line."""
    rows, d, argv = bench
    new = d.parent / "t2"
    again = compare.main([*argv, "--name", "t2", "--base-from", str(d), "--methods", "l1", "--curve"])  # no curve
    assert any("adopting the finished run" in x for x in log_lines)
    assert sum("Starting training" in x for x in log_lines) == 1  # l1's fine-tuning only
    assert again[0]["weights"] == str(new / "base" / "weights" / "best.pt") and Path(again[0]["weights"]).is_file()
    assert again[0]["mAP50-95"] == rows[0]["mAP50-95"] and not (new / "base.partial").exists()
    for name, src, extra, needle in (("t3", d, ["--base-epochs", "3"], "holds a training run with --epochs 2, not '3'"),
                                     ("t4", d.parent / "nope", [], "nope: no finished base there")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            compare.main([*argv, "--name", name, "--base-from", str(src), "--methods", "l1", *extra])
        err = [x for x in capsys.readouterr().err.splitlines() if x]
        assert e.value.code == 1 and len(err) == 1 and needle in err[0], err


def test_tp_pruned_model_is_a_normal_checkpoint(tmp_path, one_thread):
    """Torch-Pruning's cut lands at the GFLOPs target, rebuilds from its yaml, evaluates in val.py and exports to an
    ONNX file whose ONNX Runtime output matches PyTorch's."""
    import export
    import val
    from utils.onnx_backend import OnnxModel

    data = tiny_data(tmp_path / "data")
    w = tiny_weights(tmp_path / "w.pt")
    recs = {imp: tp_prune.main(["--weights", str(w), "--importance", imp, "--gflops", "0.6", "--data", str(data),
                                "--imgsz", "64", "--batch-size", "4", "--calib-batches", "1", "--workers", "0",
                                "--project", str(tmp_path), "--name", imp]) for imp in tp_prune.IMPORTANCE}
    for rec in recs.values():
        assert 0.55 < rec["settings"]["share"] <= 0.6
        assert rec["after"]["GFLOPs"] / rec["before"]["GFLOPs"] == pytest.approx(rec["settings"]["share"], rel=0.01)
        assert {"eval"} <= set(rec["after"]) and rec["torch_pruning"] == tp_prune.tp_version()
    pt = Path(recs["taylor"]["save_dir"]) / "pruned.pt"
    ckpt = load_checkpoint(pt)
    assert ckpt["prune"]["method"] == "tp-taylor" and ckpt["optimizer"] is None
    assert next(ckpt["model"].parameters()).dtype == torch.float16
    model = load_model(pt)
    rebuilt = DetectionModel(yaml_load(Path(recs["taylor"]["save_dir"]) / "pruned.yaml"))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    record = val.main(["--weights", str(pt), "--data", str(data), "--imgsz", "64", "--workers", "0",
                       "--project", str(tmp_path), "--name", "val", "--no-plots"])[0]
    assert record["params"] == sum(p.numel() for p in model.parameters()) and math.isfinite(record["mAP50-95"])
    ns = argparse.Namespace(imgsz=[64, 64], dynamic=False, opset=export.OPSET, int8=False)
    onnx = export.export_weights(pt, ns)["onnx"]
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        ref = load_model(pt, fuse=True)(torch.from_numpy(x))[0].numpy()
    assert np.allclose(OnnxModel(onnx).run(x), ref, atol=1e-3, rtol=1e-4)


def test_dense_width_is_the_nearest_to_the_target(one_thread):
    cfg = {**yaml_load(ROOT / "models" / "yolov5n.yaml"), "nc": 2}
    target = 0.5 * model_flops(DetectionModel(cfg), 64)
    w, gf = compare.dense_width(cfg, target, 64)
    assert gf == pytest.approx(model_flops(DetectionModel({**cfg, "width_multiple": w}), 64))
    scan = [model_flops(DetectionModel({**cfg, "width_multiple": x}), 64) for x in np.arange(0.1, 0.25, 0.01)]
    assert abs(gf - target) <= min(abs(f - target) for f in scan) + 1e-12
    assert abs(gf / target - 1) < 0.1


def test_curve_takes_the_two_best_of_ours_and_the_best_of_torch_pruning():
    c = compare.Compare.__new__(compare.Compare)
    c.opt = Namespace(curve_methods=None)
    fit = {"slim": 0.3, "l1": 0.1, "taylor": 0.5, "eagleeye": 0.2, "tp-magnitude": 0.25, "tp-taylor": 0.4, "dense": 0.9}
    assert c.curve_methods([{"method": m, "fit": f} for m, f in fit.items()]) == ["taylor", "slim", "tp-taylor"]
    fit |= {"l1-uniform": 0.35, compare.CONTROL: 0.95}  # the control is no method
    assert c.curve_methods([{"method": m, "fit": f} for m, f in fit.items()]) == ["taylor", "l1-uniform", "tp-taylor"]
    c.opt = Namespace(curve_methods=["dense", "l1"])
    assert c.curve_methods([]) == ["dense", "l1"]


@pytest.mark.slow
def test_control_fine_tunes_the_base_with_the_budget_and_nothing_else(bench):
    """--methods base-ft: the unpruned base through finetune.py for the budget, a row without a GFLOPs target right
    after the base; no other training stage runs again."""
    _, d, argv = bench
    train = {f: f.stat().st_mtime_ns for f in d.rglob("stage.json") if f.parent.name not in compare.EVAL}
    rows = compare.main([*argv, "--methods", "l1", compare.CONTROL])
    assert [r["method"] for r in rows] == ["base", "l1", compare.CONTROL, "l1"]
    base, ctl = rows[0], rows[2]
    assert ctl["target_gflops"] is None and ctl["params"] == base["params"] and ctl["GFLOPs_ratio"] == 1.0
    assert set(ctl["seconds"]) == {"finetune"}
    assert Path(ctl["weights"]).parent.parent == d / compare.CONTROL / "finetune"
    assert {f: f.stat().st_mtime_ns for f in train} == train
    command = next(c for c in (d / "commands.sh").read_text().splitlines() if str(d / compare.CONTROL) in c)
    assert command.startswith(f"python finetune.py --weights {base['weights']} ") and " --epochs 2 " in command
    assert "\n| base | - |" in (md := (d / "results.md").read_text()) and f"|\n| {compare.CONTROL} | - |" in md


def test_ft_hyp_reaches_the_fine_tuning_stages_only(tmp_path):
    """--ft-hyp: every finetune.py stage (the control's too) gets it; the base and slim's sparse training keep --hyp;
    a hyp that does not exist stops the run before the base trains."""
    hyps = ROOT / "data" / "hyps"
    argv = ["--data", "d.yaml", "--weights", "w.pt", "--project", str(tmp_path), "--methods", "slim", "l1",
            compare.CONTROL, "--ft-hyp", str(hyps / "hyp.finetune-small.yaml")]
    c = compare.Compare(compare.parse_opt(argv))
    calls = []

    def stage(script, main, args, epochs=0, refresh=False):
        calls.append((script, dict(flag_values(args))))
        return {"weights": "best.pt", "last": "last.pt", "save_dir": str(tmp_path), "mAP50-95": 0.5}

    c.stage = stage
    c.run_base()
    for m in c.opt.methods:
        c.method(m, 0.5)
    hyp = {s: a["--hyp"] for s, a in calls if "--hyp" in a}
    assert [s for s, _ in calls] == ["train.py", "train_sparse.py", "prune.py", "finetune.py", "prune.py",
                                     "finetune.py", "finetune.py"]
    assert hyp == {"train.py": str(hyps / "hyp.small.yaml"), "train_sparse.py": str(hyps / "hyp.small.yaml"),
                   "finetune.py": str(hyps / "hyp.finetune-small.yaml")}
    assert sum(a.get("--hyp") == str(hyps / "hyp.finetune-small.yaml") for _, a in calls) == 3
    assert compare.parse_opt(argv[:-2]).ft_hyp == str(hyps / "hyp.small.yaml")  # default: --hyp
    with pytest.raises(compare.UserError, match="--ft-hyp nope.yaml: no such file"):
        compare.parse_opt([*argv[:-1], "nope.yaml"])


def test_cut_flags_reach_only_the_cuts_that_read_them(tmp_path):
    """--taylor-score weights: both taylor rows' prune.py stages get it, l1's and eagleeye's do not;
    --max-layer-percent: the global rankings (l1, taylor) get it, the uniform and eagleeye cuts do not; without them no
    prune.py stage names them (prune.py's own defaults, so earlier runs' stages stay cached)."""
    def prune_args(extra):
        argv = ["--data", "d.yaml", "--weights", "w.pt", "--project", str(tmp_path), "--methods", "l1", "taylor",
                "taylor-uniform", "eagleeye", *extra]
        c = compare.Compare(compare.parse_opt(argv))
        calls = {}

        def stage(script, main, args, epochs=0, refresh=False):
            a = dict(flag_values(args))
            if script == "prune.py":
                calls[Path(a["--project"]).name] = a
            return {"weights": "best.pt", "last": "last.pt", "save_dir": str(tmp_path), "mAP50-95": 0.5}

        c.stage = stage
        c.run_base()
        for m in c.opt.methods:
            c.cut(m, 0.5)
        return calls

    calls = prune_args(["--taylor-score", "weights"])
    assert {k: a.get("--taylor-score") for k, a in calls.items()} == {
        "l1-0.5": None, "taylor-0.5": "weights", "taylor-uniform-0.5": "weights", "eagleeye-0.5": None}
    assert calls["taylor-uniform-0.5"]["--allocation"] == "uniform"
    assert all("--taylor-score" not in a for a in prune_args([]).values())
    calls = prune_args(["--max-layer-percent", "0.8"])
    assert {k: a.get("--max-layer-percent") for k, a in calls.items()} == {
        "l1-0.5": "0.8", "taylor-0.5": "0.8", "taylor-uniform-0.5": None, "eagleeye-0.5": None}
    assert all("--max-layer-percent" not in a for a in prune_args([]).values())
    with pytest.raises(compare.UserError, match="--max-layer-percent"):
        prune_args(["--max-layer-percent", "1.5"])


def test_ft_seeds_fine_tune_every_cut_again_and_report_the_mean(tmp_path):
    """--ft-seeds 1: every finetune.py stage (base-ft's too) runs again with --seed 1 in finetune-s1; dense and the
    base run once; val.py reads every run and the rows carry each seed's figure, their mean and its ratio."""
    argv = ["--data", "d.yaml", "--weights", "w.pt", "--project", str(tmp_path), "--name", "s", "--methods", "l1",
            "taylor", "dense", compare.CONTROL, "--ft-seeds", "1", "0", "1"]
    c = compare.Compare(compare.parse_opt(argv))
    assert c.opt.ft_seeds == [1]  # --seed 0 is the first run of every row; repeats dropped
    fit = {"l1": (0.50, 0.40), "taylor": (0.45, 0.57), compare.CONTROL: (0.60, 0.62)}  # (seed 0, seed 1)
    calls = []

    def stage(script, main, args, epochs=0, refresh=False):
        a = dict(flag_values(args))
        calls.append((script, a))
        if script == "val.py":
            return [{"P": 0.5, "R": 0.5, "mAP50": 0.9, "mAP50-95": score[w], "params": 10, "GFLOPs": 1.0}
                    for w in a["--weights"].split()]
        if script == "benchmarks/latency.py":
            return [{"model": m, "backend": b, "ms": 1.0} for m in ("base", "l1-0.5", "taylor-0.5", "dense-0.5",
                                                                     compare.CONTROL) for b in
                    ("pytorch fp32", "onnxruntime fp32")]
        d = Path(a["--project"]) / a["--name"]
        c.spent[str(d.relative_to(c.dir))] = (1.0, 0)
        return {"weights": str(d / "best.pt"), "last": str(d / "last.pt"), "save_dir": str(d), "mAP50-95": 0.5}

    c.stage = stage
    (c.dir / "base").mkdir()
    tiny_weights(c.dir / "base" / "best.pt")  # dense reads the base's classes and GFLOPs
    c.run_base()
    c.spent["base"] = (1.0, 0)
    rows = [c.method(m, 0.5) for m in c.opt.methods]
    tunes = [a for s, a in calls if s == "finetune.py"]
    assert [(Path(a["--project"]).name, a["--name"], a["--seed"]) for a in tunes] == [
        ("l1-0.5", "finetune", "0"), ("l1-0.5", "finetune-s1", "1"), ("taylor-0.5", "finetune", "0"),
        ("taylor-0.5", "finetune-s1", "1"), ("base-ft", "finetune", "0"), ("base-ft", "finetune-s1", "1")]
    assert sum(s == "train.py" for s, _ in calls) == 2  # the base and dense, once each
    score = {c.base: 0.6, rows[2]["weights"]: 0.3}
    for r in rows:
        if r["method"] in fit:
            score[r["weights"]], score[r["repeats"][0]] = fit[r["method"]]
    # val.py lists every run once (rect and square); the latency stage only the rows
    out = c.evaluate(rows)
    val_weights = [a["--weights"].split() for s, a in calls if s == "val.py"]
    assert len(val_weights) == 2 and val_weights[0] == val_weights[1] and len(set(val_weights[0])) == 8
    by = {r["method"]: r for r in out}
    assert by["l1"]["mAP50-95_seeds"] == [0.50, 0.40] and by["l1"]["mAP50-95_mean"] == pytest.approx(0.45)
    assert by["taylor"]["mAP50-95_square_seeds"] == [0.45, 0.57] and by["taylor"]["seeds"] == [0, 1]
    assert by["dense"]["mAP50-95_seeds"] == [0.3] and by["base"]["seeds"] == [0]
    assert by["taylor"]["mAP50-95_mean_ratio"] == pytest.approx(0.51 / 0.6, abs=1e-4)
    assert set(by["l1"]["seconds"]) == {"prune", "finetune", "finetune-s1"}
    md = compare.report(out, c.opt, 3, [(0, 0.5), (1, 0.6)])
    assert "| mAP50-95 mean | mAP50-95 square mean |" in md and "also with seed 1" in md
    assert "| 0.510 (0.85x), 0.450-0.570 |" in md
    rows_md = [x.split(" | ")[0] for x in md.splitlines() if x.startswith("| ") and " | 0.5 | " in x]
    assert rows_md == ["| taylor", "| l1", "| dense"]  # ranked by the mean, not by seed 0 (l1 0.50 > taylor 0.45)


@pytest.mark.slow
def test_ft_seeds_end_to_end(bench):
    """--ft-seeds 1 on the finished run: only the seed-1 fine-tunings train (other seed, other weights), val.py
    reads them, and the rows report both seeds."""
    _, d, argv = bench
    train = {f: f.stat().st_mtime_ns for f in d.rglob("stage.json") if f.parent.name not in compare.EVAL}
    rows = compare.main([*argv, "--methods", "l1", "--ft-seeds", "1"])
    assert {f: f.stat().st_mtime_ns for f in train} == train
    l1 = rows[1]
    assert l1["method"] == "l1" and l1["seeds"] == [0, 1] and l1["mAP50-95_seeds"][0] == l1["mAP50-95"]
    assert l1["mAP50-95_mean"] == pytest.approx(sum(l1["mAP50-95_seeds"]) / 2)
    a = load_model(l1["weights"]).state_dict()
    b = load_model(d / "l1-0.5" / "finetune-s1" / "weights" / "last.pt").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    command = next(c for c in (d / "commands.sh").read_text().splitlines() if "--name finetune-s1" in c)
    assert " --seed 1 " in command and "l1-0.5/prune/pruned.pt" in command
    assert "| mAP50-95 mean |" in (d / "results.md").read_text()
