"""finetune.py: train.py on the checkpoint's own architecture with hyp.finetune.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import finetune
import train
from conftest import assert_one_line_error, make_dataset, run_script
from test_train import read_csv, tiny_args
from utils.distill import distill_loss
from models.yolo import DetectionModel
from utils.checkpoint import load_model, save_checkpoint
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


def test_distill_loss_is_zero_with_zero_gradient_at_the_teacher():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 3, 4, 4, 8) * 3 for _ in range(3)]
    student = [t.clone().requires_grad_(True) for t in teacher]
    loss = distill_loss(student, teacher)
    loss.backward()
    assert abs(loss.item()) < 1e-5
    assert all(s.grad.abs().max() < 1e-6 for s in student)
    moved = [(t + 0.5 * torch.randn_like(t)).requires_grad_(True) for t in teacher]
    loss = distill_loss(moved, teacher)
    loss.backward()
    assert loss.item() > 0.01 and all(s.grad.abs().max() > 0 for s in moved)


def test_distill_loss_weighs_each_term_by_its_gain():
    """Soft targets weighed as the detection loss weighs labels: each kind of term scales with its own gain."""
    torch.manual_seed(0)
    teacher = [torch.randn(2, 3, 4, 4, 8) * 3 for _ in range(3)]
    for k, idx in enumerate((slice(0, 4), slice(4, 5), slice(5, 8))):  # box, obj, cls
        moved = [t.clone() for t in teacher]
        for m in moved:
            m[..., idx] += 0.5
        gains = [1.0, 1.0, 1.0]
        gains[k] = 0.05
        weighted, plain = distill_loss(moved, teacher, gains=tuple(gains)), distill_loss(moved, teacher)
        rest = distill_loss(moved, teacher, gains=tuple(0.0 if i == k else 1.0 for i in range(3)))
        assert weighted.item() == pytest.approx(rest.item() + 0.05 * (plain.item() - rest.item()), rel=1e-5)
        assert plain.item() - rest.item() > 1e-3  # the moved outputs do show up in their own term


def test_finetune_with_teacher_logs_kd_loss(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    base = train.run(train.parse_opt(tiny_args(tmp_path, data, "--noplots", "--name", "base", epochs=1)))
    args = [a for a in tiny_args(tmp_path, data, "--noplots", epochs=1) if a not in ("--cfg", "yolov5n.yaml")]
    rec = finetune.main(["--weights", base["last"], "--teacher", base["last"], *args, "--name", "kd"])
    rows = read_csv(Path(rec["weights"]).parents[1] / "results.csv")
    assert 0 <= float(rows[0]["train/kd_loss"]) < 0.5  # the student starts as the teacher, then drifts slightly


def test_teacher_with_other_classes_is_one_clear_line(tmp_path):
    data = make_dataset(tmp_path / "data", n=4, size=(64, 80))
    student, teacher = tmp_path / "s.pt", tmp_path / "t.pt"
    for f, nc in ((student, 2), (teacher, 3)):
        save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=nc).half(), "epoch": -1}, f)
    r = run_script("finetune.py", "--weights", str(student), "--teacher", str(teacher), "--data", str(data),
                   "--epochs", "1", "--imgsz", "64", "--device", "cpu", "--project", str(tmp_path / "runs"))
    assert_one_line_error(r, "--teacher", "nc=3")
    assert not list(tmp_path.glob("runs/*/weights/*.pt"))
