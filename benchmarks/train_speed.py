"""Training throughput (images/s) on this machine for torch thread / dataloader worker settings, in one run.

    python benchmarks/train_speed.py --data data/synthetic.yaml --cfg yolov5n.yaml --imgsz 320 --batches 20

Each setting runs the real training step (augmented batch, forward, YOLOv5 loss, backward, SGD step) in its own
process, so the thread settings cannot leak between them; settings are interleaved over --rounds and the median
is reported with the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_setting(data: str, cfg: str, imgsz: int, batch: int, batches: int, threads: int, workers: int) -> float:
    """images/s of `batches` training steps after 2 warm-up steps."""
    import torch

    from models.yolo import DetectionModel
    from utils.data import check_dataset
    from utils.dataloaders import create_dataloader
    from utils.files import yaml_load
    from utils.loss import ComputeLoss

    torch.set_num_threads(threads)
    d = check_dataset(data, splits=("train",))
    hyp = yaml_load(ROOT / "data/hyps/hyp.scratch-low.yaml")
    model = DetectionModel(cfg, nc=d["nc"]).train()
    model.hyp = hyp
    loss_fn = ComputeLoss(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loader = create_dataloader(d["train"], imgsz, batch, 32, hyp=hyp, augment=True, workers=workers, shuffle=True)[0]
    n, t0 = 0, 0.0
    while n < batches + 2:
        for imgs, targets, _, _ in loader:
            if n == 2:
                t0 = time.perf_counter()
            loss, _ = loss_fn(model(imgs.float() / 255), targets)
            loss.backward()
            opt.step()
            opt.zero_grad()
            n += 1
            if n == batches + 2:
                break
    return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data/synthetic.yaml"))
    p.add_argument("--cfg", default="yolov5n.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settings", default="1x0,2x0,1x2,2x2", help="threads x workers, comma separated")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process: run one setting
    opt = p.parse_args()
    if opt.one:
        t, w = map(int, opt.one.split("x"))
        print(json.dumps(one_setting(opt.data, opt.cfg, opt.imgsz, opt.batch_size, opt.batches, t, w)))
        return
    settings = opt.settings.split(",")
    results: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(opt.rounds):
        for s in settings:
            cmd = [sys.executable, __file__, "--one", s, "--data", opt.data, "--cfg", opt.cfg, "--imgsz",
                   str(opt.imgsz), "--batch-size", str(opt.batch_size), "--batches", str(opt.batches)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": ""})
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            results[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {s}: {results[s][-1]:.1f} img/s", flush=True)
    base = statistics.median(results[settings[0]])
    print(f"\n{opt.cfg} at {opt.imgsz}, batch {opt.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'threads x workers':>18}{'img/s':>9}{'spread':>9}{'ratio':>8}")
    for s, v in results.items():
        m = statistics.median(v)
        print(f"{s:>18}{m:>9.1f}{max(v) - min(v):>9.1f}{m / base:>8.2f}")


if __name__ == "__main__":
    main()
