"""finetune.py: train.py on the checkpoint's own architecture with hyp.finetune.yaml."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import finetune
from conftest import ROOT, assert_one_line_error, make_dataset, run_script
from helpers import odd_anchors, read_csv, set_odd_anchors, tiny_args
from models.yolo import DetectionModel
from utils.checkpoint import load_model, save_checkpoint
from utils.files import yaml_load
from utils.hooks.distill import distill_loss
from utils.torch_utils import count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 2 torch threads on 2 busy cores ran training 10x slower


def test_finetune_keeps_architecture_and_anchors(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    cfg = yaml_load(ROOT / "models/yolov5n.yaml")
    cfg["width_multiple"] = 0.125  # an architecture no standard yaml has: only the checkpoint's yaml rebuilds it
    base = tmp_path / "base.pt"
    src = set_odd_anchors(DetectionModel(cfg, nc=2))  # anchors its yaml does not have: kept, not rebuilt
    save_checkpoint({"model": copy.deepcopy(src).half(), "ema": None, "epoch": -1, "opt": {}}, base)
    ft_args = [a for a in tiny_args(tmp_path, data, "--noplots", epochs=1) if a not in ("--cfg", "yolov5n.yaml")]
    rec = finetune.main(["--weights", str(base), *ft_args, "--name", "ft"])
    out = load_model(rec["last"])
    assert count_params(out) == count_params(src) < 1_000_000
    assert odd_anchors(out)
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


def _output_distance(a: DetectionModel, b: DetectionModel, x: torch.Tensor) -> float:
    """Mean squared difference of the sigmoid outputs: an independent measure, not distill_loss."""
    with torch.no_grad():
        return sum(((p.sigmoid() - q.sigmoid()) ** 2).mean() for p, q in zip(a(x)[1], b(x)[1])).item()


def test_finetune_with_teacher_distils(tmp_path):
    """--teacher's loss reaches the weights: with a teacher whose objectness and class logits sit 3 above the
    student's, kd_loss is logged positive and the student ends far closer to the teacher than the same seeded run
    without one (0.0039 against 0.0002 measured), which rules out a term that is logged but never back-propagated."""
    data = make_dataset(tmp_path / "data", n=8, size=(64, 80))
    torch.manual_seed(0)
    student = DetectionModel("yolov5n.yaml", nc=2)
    teacher = copy.deepcopy(student)
    d = teacher.model[-1]
    with torch.no_grad():
        for conv in d.m:
            conv.bias.view(d.na, d.no)[:, 4:] += 3.0
    files = {"student": tmp_path / "student.pt", "teacher": tmp_path / "teacher.pt"}
    for name, m in (("student", student), ("teacher", teacher)):
        save_checkpoint({"model": m.half(), "ema": None, "epoch": -1, "opt": {}}, files[name])
    args = ["--weights", str(files["student"]),
            *[a for a in tiny_args(tmp_path, data, "--noplots", epochs=1) if a not in ("--cfg", "yolov5n.yaml")]]
    # at imgsz 64 the detection loss's gains (which the soft targets carry) are small: --kd 10 shows them in 2 steps
    kd = finetune.main([*args, "--teacher", str(files["teacher"]), "--kd", "10", "--name", "kd"])
    plain = finetune.main([*args, "--name", "plain"])
    rows = read_csv(Path(kd["weights"]).parents[1] / "results.csv")
    assert all(float(r["train/kd_loss"]) > 0.01 for r in rows)  # 0.033 measured
    assert "train/kd_loss" not in read_csv(Path(plain["weights"]).parents[1] / "results.csv")[0]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t = load_model(files["teacher"])
    start, with_kd, without = (_output_distance(load_model(f), t, x) for f in (files["student"], kd["last"],
                                                                               plain["last"]))
    assert start - with_kd > 5 * abs(start - without)


def test_teacher_with_other_classes_is_one_clear_line(tmp_path):
    data = make_dataset(tmp_path / "data", n=4, size=(64, 80))
    student, teacher = tmp_path / "s.pt", tmp_path / "t.pt"
    for f, nc in ((student, 2), (teacher, 3)):
        save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=nc).half(), "epoch": -1}, f)
    r = run_script("finetune.py", "--weights", str(student), "--teacher", str(teacher), "--data", str(data),
                   "--epochs", "1", "--imgsz", "64", "--device", "cpu", "--project", str(tmp_path / "runs"))
    assert_one_line_error(r, "--teacher", "nc=3")
    assert not list(tmp_path.glob("runs/*/weights/*.pt"))


def test_bn_recalibration_draws_more_batches_for_the_saved_statistics():
    """--bn-recal N: N training batches after every epoch, 4 x N after the last, whose statistics are
    saved with the model; the running mean is the plain average over exactly the batches drawn."""
    from types import SimpleNamespace

    from utils.hooks import BNRecalibration

    batches = [(torch.full((2, 3, 4, 4), float(i) * 255),) for i in range(100)]  # batch i: every pixel i
    bn = torch.nn.BatchNorm2d(3).eval()
    drawn = []

    class Loader:
        def __iter__(self):
            for b in batches:
                drawn.append(b)
                yield b

    for epoch, expect in ((0, 3), (4, 12)):  # FINAL_FACTOR 4
        drawn.clear()
        state = SimpleNamespace(ema=SimpleNamespace(ema=torch.nn.Sequential(bn)), loader=Loader(), epoch=epoch,
                                epochs=5, device=torch.device("cpu"))
        BNRecalibration(3).on_epoch_end(state)
        assert len(drawn) == expect
        assert bn.running_mean.tolist() == pytest.approx([(expect - 1) / 2] * 3)  # mean of 0 .. expect-1
        assert not bn.training
