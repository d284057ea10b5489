"""Batch-1 latency measured the way a 2-core CPU needs it: warm-up, interleaved rounds across models, medians.

On a small shared CPU one model measured after another picks up drift (frequency, other processes) as a difference
between the models; interleaving rounds spreads it over all of them, and the spread between rounds is reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

Runner = Callable[[], object]


def measure(runners: dict[str, Runner], runs: int = 30, rounds: int = 5, warmup: int = 3) -> dict[str, dict]:
    """{name: {"ms": median ms per call, "p10", "p90": spread over all calls, "rounds": per-round medians}}.

    runners: zero-argument callables (one inference each); every round runs `runs // rounds` calls of each in turn.
    """
    per_round = max(1, runs // max(rounds, 1))
    for f in runners.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[list[float]]] = {k: [] for k in runners}
    for _ in range(max(rounds, 1)):
        for k, f in runners.items():
            t = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                f()
                t.append((time.perf_counter() - t0) * 1e3)
            times[k].append(t)
    out = {}
    for k, rs in times.items():
        flat = [x for r in rs for x in r]
        out[k] = {"ms": statistics.median(flat), "p10": float(np.percentile(flat, 10)),
                  "p90": float(np.percentile(flat, 90)), "rounds": [statistics.median(r) for r in rs]}
    return out


def torch_runner(model: torch.nn.Module, imgsz: int, device: torch.device | str = "cpu") -> Runner:
    """One batch-1 forward pass of a (fused, eval) model on a fixed random image, without autograd."""
    p = next(model.parameters())
    x = torch.rand(1, 3, imgsz, imgsz, device=device, dtype=p.dtype)

    @torch.inference_mode()
    def run():
        y = model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        return y

    return run
