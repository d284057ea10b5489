"""Does the fast sensitivity analysis rank the layers as the slow mAP50 one does, and how much faster is it?

    python benchmarks/sensitivity_rank.py --weights ../shared/fixtures/upstream-yolov5n-shapes.pt \
        --data data/shapes.yaml --imgsz 320 --batch-size 16 [--slow-ratios 0.25 0.5 0.75] [--slow-calib-batches 8]

Runs `prune.py --sensitivity` twice on the same model, data and held-out split: the default (held-out loss, adaptive
BN on sensitivity.CALIB_BATCHES batches, only the layers after the cut run) and the slow reference
(`--sensitivity-score map`: mAP50 with NMS after adaptive BN on --slow-calib-batches batches, the whole sub-net per
evaluation). Prints the wall and CPU time of each and the Spearman rank correlation of the two layer rankings (each
layer's mean drop over the ratios), and writes the same figures to runs/benchmarks/sensitivity_rank.json.
The wall time depends on what else this shared machine runs: the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy.stats import spearmanr  # noqa: E402

import prune  # noqa: E402
from utils.files import atomic_write  # noqa: E402
from utils.pruning.sensitivity import RATIOS  # noqa: E402


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(ROOT.parent / "shared" / "fixtures" / "upstream-yolov5n-shapes.pt"))
    p.add_argument("--data", default="data/shapes.yaml")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="the fast analysis' ratios")
    p.add_argument("--slow-ratios", type=float, nargs="+", default=list(RATIOS), help="the mAP50 analysis' ratios")
    p.add_argument("--slow-calib-batches", type=int, default=8, help="the mAP50 analysis' adaptive-BN batches")
    p.add_argument("--project", default=str(ROOT / "runs" / "benchmarks" / "sensitivity_rank"))
    return p.parse_args(argv)


def timed(args: list[str]) -> tuple[dict, float, float]:
    """(prune.main's record, wall seconds, CPU seconds of this process) of one analysis."""
    w0, c0 = time.perf_counter(), time.process_time()
    rec = prune.main(args)
    return rec, time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> dict:
    o = parse_opt(argv)
    common = ["--weights", o.weights, "--sensitivity", "--data", o.data, "--imgsz", str(o.imgsz), "--batch-size",
              str(o.batch_size), "--workers", str(o.workers), "--project", o.project, "--exist-ok"]
    load0 = os.getloadavg()[0]
    fast, fast_s, fast_cpu = timed([*common, "--ratios", *map(str, o.ratios), "--name", "fast"])
    slow, slow_s, slow_cpu = timed([*common, "--sensitivity-score", "map", "--ratios", *map(str, o.slow_ratios),
                                    "--calib-batches", str(o.slow_calib_batches), "--name", "slow"])
    fast_drop, slow_drop = dict(fast["ranking"]), dict(slow["ranking"])
    layers = list(slow_drop)
    rho = float(spearmanr([slow_drop[x] for x in layers], [fast_drop[x] for x in layers])[0])
    out = {"weights": o.weights, "data": o.data, "imgsz": o.imgsz, "layers": len(layers),
           "load_average": [load0, os.getloadavg()[0]],
           "fast": {"score": fast["metric"], "ratios": o.ratios, "wall_s": fast_s, "cpu_s": fast_cpu},
           "slow": {"score": slow["metric"], "ratios": o.slow_ratios, "calib_batches": o.slow_calib_batches,
                    "wall_s": slow_s, "cpu_s": slow_cpu},
           "spearman": rho, "mean_drop": {x: {"slow": slow_drop[x], "fast": fast_drop[x]} for x in layers}}
    print(f"\n{len(layers)} layers of {Path(o.weights).name} on {o.data} at {o.imgsz} (load average "
          f"{load0:.1f} -> {out['load_average'][1]:.1f} on {os.cpu_count()} cores)")
    print(f"{'analysis':<44}{'wall s':>9}{'CPU s':>9}")
    print(f"{'fast: held-out loss, ratios ' + ' '.join(map(str, o.ratios)):<44}{fast_s:>9.1f}{fast_cpu:>9.1f}")
    print(f"{'slow: mAP50, ratios ' + ' '.join(map(str, o.slow_ratios)):<44}{slow_s:>9.1f}{slow_cpu:>9.1f}")
    print(f"speed-up {slow_s / fast_s:.1f}x; Spearman rank correlation of the layer rankings (mean drop per layer): "
          f"{rho:.3f}")
    f = ROOT / "runs" / "benchmarks" / "sensitivity_rank.json"
    atomic_write(f, lambda fh: json.dump(out, fh, indent=2), mode="w")
    print(f"saved {f}")
    return out


if __name__ == "__main__":
    main()
