"""What network slimming costs and buys in time, measured in one run each (ratios, not absolute claims).

    python benchmarks/slim_speed.py [--model yolov5s.yaml] [--imgsz 640] [--runs 50]

1. Sparse training step: a training step (forward, loss, backward, clip, SGD step) with and without the L1 hook,
   interleaved, median ms and the ratio. The per-epoch BN recalibration of train_sparse.py is reported beside it as
   a share of an epoch.
2. prune.py on the model (no --data): wall time of the whole command (load, group, prune, fold, yaml, self-check,
   report, save).
3. CPU batch-1 latency at --imgsz of the model pruned 50% against the unpruned one (both fused, fp32), interleaved.

The model has random weights with gammas spread over [0, 1.5) (30% of them zero, as after sparse training), so the
50% cut is spread over the layers roughly as a sparse-trained model's is. Figures go to runs/benchmarks/slim_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import prune  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from utils.checkpoint import finished_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from utils.files import atomic_write  # noqa: E402
from utils.hooks import BNSparsity  # noqa: E402
from utils.latency import measure, torch_runner  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.torch_utils import count_params, recalibrate_bn, spread_bn  # noqa: E402


class _State:  # the two TrainState fields BNSparsity.after_backward reads
    epoch, epochs = 0, 1


def step_times(cfg: str, imgsz: int, batch: int, runs: int) -> dict:
    model = DetectionModel(cfg, nc=80)
    model.hyp = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0,
                 "label_smoothing": 0.0}
    loss_fn = ComputeLoss(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    hook = BNSparsity(sr=1e-3)
    hook.bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}  # every BN: the upper bound
    x = torch.rand(batch, 3, imgsz, imgsz)
    g = torch.Generator().manual_seed(0)
    targets = torch.cat([torch.arange(batch).repeat_interleave(4).float()[:, None],
                         torch.randint(0, 80, (batch * 4, 1), generator=g).float(),
                         torch.rand(batch * 4, 2, generator=g) * 0.6 + 0.2, torch.rand(batch * 4, 2, generator=g) * 0.2
                         + 0.05], 1)
    model.train()

    def step(sparse: bool):
        def run():
            loss, _ = loss_fn(model(x), targets)
            loss.backward()
            if sparse:
                hook.after_backward(_State())
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    t = measure({"plain": step(False), "sparse": step(True)}, runs=runs, rounds=5, warmup=2)
    t0 = time.perf_counter()
    recalibrate_bn(deepcopy(model), [x] * 8)
    recal = (time.perf_counter() - t0) * 1e3
    return {"plain_ms": t["plain"]["ms"], "sparse_ms": t["sparse"]["ms"],
            "ratio": t["sparse"]["ms"] / t["plain"]["ms"], "recal_8_batches_ms": recal,
            "recal_share_of_an_epoch_of_8_steps": recal / (8 * t["plain"]["ms"]), "batch": batch, "imgsz": imgsz}


def prune_time(cfg: str, tmp: Path) -> tuple[float, DetectionModel, DetectionModel]:
    model = spread_bn(DetectionModel(cfg, nc=80)).eval()
    w = tmp / "base.pt"
    save_checkpoint(finished_checkpoint(model), w)
    t0 = time.perf_counter()
    rec = prune.run(prune.parse_opt(["--weights", str(w), "--percent", "0.5", "--project", str(tmp), "--name", "p"]))
    seconds = time.perf_counter() - t0
    pruned = load_checkpoint(Path(rec["save_dir"]) / "pruned.pt")["model"].float().eval()
    return seconds, model, pruned


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="yolov5s.yaml")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--runs", type=int, default=50, help="batch-1 runs per model")
    p.add_argument("--step-imgsz", type=int, default=320)
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--step-runs", type=int, default=20)
    opt = p.parse_args()
    out = {"model": opt.model, "threads": torch.get_num_threads()}
    out["sparse_step"] = s = step_times(opt.model, opt.step_imgsz, opt.step_batch, opt.step_runs)
    print(f"1. training step, {opt.model} batch {s['batch']} at {s['imgsz']}: plain {s['plain_ms']:.0f} ms, "
          f"with the L1 hook {s['sparse_ms']:.0f} ms, ratio {s['ratio']:.3f}; BN recalibration on 8 batches "
          f"{s['recal_8_batches_ms']:.0f} ms = {s['recal_share_of_an_epoch_of_8_steps']:.1%} of an 8-step epoch")
    with tempfile.TemporaryDirectory() as tmp:
        seconds, base, pruned = prune_time(opt.model, Path(tmp))
    out["prune_seconds"] = seconds
    print(f"2. prune.py --percent 0.5 on {opt.model} (no --data): {seconds:.1f} s")
    runners = {"base": torch_runner(deepcopy(base).fuse(), opt.imgsz),
               "pruned": torch_runner(deepcopy(pruned).fuse(), opt.imgsz)}
    lat = measure(runners, runs=opt.runs, rounds=5, warmup=3)
    ratio = lat["pruned"]["ms"] / lat["base"]["ms"]
    out["latency"] = {"imgsz": opt.imgsz, **lat, "ratio": ratio, "params": [count_params(base), count_params(pruned)]}
    print(f"3. CPU batch-1 at {opt.imgsz}: base {lat['base']['ms']:.1f} ms (p10-p90 {lat['base']['p10']:.1f}-"
          f"{lat['base']['p90']:.1f}), 50%-pruned {lat['pruned']['ms']:.1f} ms ({lat['pruned']['p10']:.1f}-"
          f"{lat['pruned']['p90']:.1f}), ratio {ratio:.3f}; params {count_params(base):,} -> {count_params(pruned):,}"
          f"; per-round ratios {[round(a / b, 3) for a, b in zip(lat['pruned']['rounds'], lat['base']['rounds'])]}")
    out["median_round_ratio"] = statistics.median(a / b for a, b in zip(lat["pruned"]["rounds"], lat["base"]["rounds"]))
    dest = ROOT / "runs" / "benchmarks" / "slim_speed.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda f: json.dump(out, f, indent=2), mode="w")
    print(f"saved {dest}")


if __name__ == "__main__":
    main()
