"""Speed of val.py on coco128 (../shared/datasets/coco128) with the official yolov5n, CPU.

    python benchmarks/val_speed.py [--imgsz 320 640] [--rounds 2] [--workers 2]

Prints images/s (end to end, loading included) and per-stage ms per image, and writes the same figures to
runs/benchmarks/val_speed.json. Each size is run `rounds` times in alternation; the median round is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from utils.checkpoint import load_model  # noqa: E402
from utils.data import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.evaluate import evaluate  # noqa: E402
from utils.files import atomic_write  # noqa: E402

SHARED = ROOT.parent / "shared"


def one_round(model, data: dict, imgsz: int, workers: int) -> dict:
    t0 = time.perf_counter()
    loader = create_dataloader(data["val"], imgsz, 32, 32, rect=True, pad=0.5, workers=workers, nc=data["nc"])[0]
    res = evaluate(model, loader, data["names"])
    wall = time.perf_counter() - t0
    return {"imgsz": imgsz, "images": res.seen, "wall_s": wall, "images_per_s": res.seen / wall,
            "pre_ms": res.speed[0], "inference_ms": res.speed[1], "nms_ms": res.speed[2], "mAP50-95": res.map}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    opt = p.parse_args()
    weights, data_root = SHARED / "fixtures" / "yolov5n-coco.pt", SHARED / "datasets" / "coco128"
    if not weights.exists() or not data_root.exists():
        sys.exit(f"needs {weights} and {data_root}")
    data = check_dataset({**yaml.safe_load((ROOT / "data" / "coco128.yaml").read_text()),
                          "path": str(data_root)})
    model = load_model(weights, "cpu", fuse=True)
    model(torch.zeros(1, 3, 320, 320))  # warm-up
    rounds = {s: [] for s in opt.imgsz}
    for _ in range(opt.rounds):  # alternate sizes so that drifts of this shared machine hit all alike
        for s in opt.imgsz:
            rounds[s].append(one_round(model, data, s, opt.workers))
    out = []
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {opt.rounds} rounds (median)")
    print(f"{'imgsz':>6}{'images/s':>10}{'wall s':>8}{'pre ms':>8}{'infer ms':>10}{'NMS ms':>8}{'spread':>9}")
    for s, rs in rounds.items():
        med = sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2]
        spread = (max(r["wall_s"] for r in rs) - min(r["wall_s"] for r in rs)) / statistics.median(
            r["wall_s"] for r in rs)
        out.append({**med, "rounds_wall_s": [r["wall_s"] for r in rs], "spread": spread})
        print(f"{s:>6}{med['images_per_s']:>10.1f}{med['wall_s']:>8.2f}{med['pre_ms']:>8.1f}"
              f"{med['inference_ms']:>10.1f}{med['nms_ms']:>8.1f}{spread:>8.0%}")
    f = ROOT / "runs" / "benchmarks" / "val_speed.json"
    atomic_write(f, lambda fh: json.dump(out, fh, indent=2), mode="w")
    print(f"saved {f}")


if __name__ == "__main__":
    main()
