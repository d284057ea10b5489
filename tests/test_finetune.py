"""finetune.py: train.py on the checkpoint's own architecture with hyp.finetune.yaml."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

import finetune
import train
from conftest import assert_one_line_error, make_dataset, run_script
from test_train import tiny_args
from utils.checkpoint import load_model
from utils.files import yaml_load
from utils.torch_utils import count_params


def test_finetune_keeps_architecture_and_anchors(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    args = tiny_args(tmp_path, data, "--noplots", epochs=1)
    cfg = yaml_load(train.ROOT / "models/yolov5n.yaml")
    cfg["width_multiple"] = 0.125  # an architecture no standard yaml has: only the checkpoint's yaml rebuilds it
    (tmp_path / "odd.yaml").write_text(yaml.safe_dump(cfg))
    args[args.index("--cfg"):args.index("--cfg") + 2] = ["--cfg", str(tmp_path / "odd.yaml"), "--name", "base"]
    base = train.run(train.parse_opt(args))
    src = load_model(base["last"])
    ft_args = [a for a in tiny_args(tmp_path, data, "--noplots", epochs=1) if a not in ("--cfg", "yolov5n.yaml")]
    rec = finetune.main(["--weights", base["last"], *ft_args, "--name", "ft"])
    out = load_model(rec["last"])
    assert count_params(out) == count_params(src) < 1_000_000
    assert torch.equal(out.model[-1].anchors, src.model[-1].anchors)
    assert yaml_load(Path(rec["weights"]).parents[1] / "hyp.yaml")["lr0"] == 0.002


def test_finetune_user_errors(tmp_path):
    assert_one_line_error(run_script("finetune.py", "--epochs", "1"), "--weights")
    assert_one_line_error(run_script("finetune.py", "--weights", "x.pt", "--cfg", "yolov5s.yaml"), "--cfg")
