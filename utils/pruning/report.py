"""prune.py's outputs besides the model: report.json (the figures), report.md (the same for people), channels.png.
What is said about the cut itself is the method's (utils.pruning.methods): one registry lookup by its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from utils.files import atomic_write
from utils.pruning.methods import METHODS
from utils.torch_utils import count_params, model_flops

EVAL_KEYS = ("P", "R", "mAP50", "mAP50-95")


def model_figures(model: nn.Module, imgsz: int) -> dict:
    """What report.json's before/after hold: parameters, GFLOPs at imgsz, BN channels, the share of zero conv
    weights."""
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in convs) / max(sum(w.numel() for w in convs), 1)
    return {"params": count_params(model), "GFLOPs": round(model_flops(model, imgsz), 4), "bn_channels": bn,
            "zero_share": round(zeros, 6)}


def write_report(save_dir: Path, record: dict) -> None:
    """record: what prune.py measured (see prune.py's `run`); writes report.json and report.md."""
    atomic_write(save_dir / "report.json", lambda f: json.dump(record, f, indent=2), mode="w")
    atomic_write(save_dir / "report.md", lambda f: f.write(markdown(record)), mode="w")


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.3f}x" if a else "-"


def decision(s: dict) -> str:
    """One console line on what the method decided (report.md says it at length)."""
    return METHODS[s["method"]]().decision(s)


def markdown(r: dict) -> str:
    s, b, a = r["settings"], r["before"], r["after"]
    method = METHODS[s["method"]]()
    lines = [f"# Pruning report: {r['weights']}", "", *method.report_lines(s, b, a), "",
             "| | before | after | ratio |", "|---|---|---|---|",
             f"| parameters | {b['params']:,} | {a['params']:,} | {_ratio(b['params'], a['params'])} |",
             f"| GFLOPs at {r['imgsz']} | {b['GFLOPs']:.2f} | {a['GFLOPs']:.2f} | {_ratio(b['GFLOPs'], a['GFLOPs'])} |"]
    if "eval" in b:
        for k in EVAL_KEYS:
            lines.append(f"| {k} | {b['eval'][k]:.3f} | {a['eval'][k]:.3f} | {_ratio(b['eval'][k], a['eval'][k])} |")
        lines.append(f"\nEvaluated on `{r['data']}` ({r['eval_split']} split) at {r['imgsz']}.")
    if s.get("clamped_layers"):
        lines.append(f"\nKept at --min-channels although every channel scored below the threshold: "
                     f"{', '.join(s['clamped_layers'])}.")
    return "\n".join([*lines, *method.tables(r)]) + "\n"


def plot_channels(layers: list[dict], save_path: Path, title: str = "", unit: str = "channels") -> None:
    """Kept vs removed channels of every BN layer (or weights of every conv), in model order."""
    from utils.plots import plt

    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * n), 4.5), tight_layout=True)
    x = range(n)
    ax.bar(x, [d["channels"] for d in layers], color="#d9d9d9", label="removed")
    ax.bar(x, [d["kept"] for d in layers], color="#1f77b4", label="kept")
    ax.set_xticks(list(x))
    ax.set_xticklabels([d["name"].removeprefix("model.") for d in layers], rotation=90, fontsize=6)
    ax.set_ylabel(unit)
    if unit != "channels":
        ax.set_yscale("log")
    ax.set_title(title or f"{unit} kept per layer")
    ax.legend()
    fig.savefig(save_path, dpi=150)
    plt.close(fig)
