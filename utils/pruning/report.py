"""prune.py's outputs besides the model: report.json (the figures), report.md (the same for people), channels.png."""

from __future__ import annotations

import json
from pathlib import Path

from utils.files import atomic_write

EVAL_KEYS = ("P", "R", "mAP50", "mAP50-95")


def write_report(save_dir: Path, record: dict) -> None:
    """record: what prune.py measured (see prune.py's `report_record`); writes report.json and report.md."""
    atomic_write(save_dir / "report.json", lambda f: json.dump(record, f, indent=2), mode="w")
    atomic_write(save_dir / "report.md", lambda f: f.write(markdown(record)), mode="w")


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.3f}x" if a else "-"


def markdown(r: dict) -> str:
    s, b, a = r["settings"], r["before"], r["after"]
    lines = [
        f"# Pruning report: {r['weights']}",
        "",
        f"Method `{s['method']}`, percent {s['percent']}, threshold {s['threshold']:.4g} "
        f"(channels scoring below it removed), group score `{s['group_score']}`, skip shortcut "
        f"{s['skip_shortcut']}, min channels {s['min_channels']}, round to {s['round_to']}.",
        f"Largest safe percent (no layer emptied by the threshold alone): {s['safe_percent']:.3f}.",
        f"Removed {s['group_channels'] - s['group_channels_kept']} of {s['group_channels']} group channels "
        f"({s['removed_share']:.1%}); BN channels {b['bn_channels']} -> {a['bn_channels']}.",
        "",
        "| | before | after | ratio |",
        "|---|---|---|---|",
        f"| parameters | {b['params']:,} | {a['params']:,} | {_ratio(b['params'], a['params'])} |",
        f"| GFLOPs at {r['imgsz']} | {b['GFLOPs']:.2f} | {a['GFLOPs']:.2f} | {_ratio(b['GFLOPs'], a['GFLOPs'])} |",
    ]
    if "eval" in b:
        for k in EVAL_KEYS:
            lines.append(f"| {k} | {b['eval'][k]:.3f} | {a['eval'][k]:.3f} | {_ratio(b['eval'][k], a['eval'][k])} |")
        lines.append(f"\nEvaluated on `{r['data']}` ({r['eval_split']} split) at {r['imgsz']}.")
    if s["clamped_layers"]:
        lines.append(f"\nKept at --min-channels although every channel scored below the threshold: "
                     f"{', '.join(s['clamped_layers'])}.")
    lines += ["", "## Channels per layer", "", "| layer | kept | total | kept share |", "|---|---|---|---|"]
    lines += [f"| {x['name']} | {x['kept']} | {x['channels']} | {x['kept'] / x['channels']:.2f} |"
              for x in r["layers"]]
    return "\n".join(lines) + "\n"


def plot_channels(layers: list[dict], save_path: Path, title: str = "") -> None:
    """Kept vs removed channels of every BN layer, in model order."""
    from utils.plots import plt

    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * n), 4.5), tight_layout=True)
    x = range(n)
    kept = [d["kept"] for d in layers]
    ax.bar(x, [d["channels"] for d in layers], color="#d9d9d9", label="removed")
    ax.bar(x, kept, color="#1f77b4", label="kept")
    ax.set_xticks(list(x))
    ax.set_xticklabels([d["name"].removeprefix("model.") for d in layers], rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title(title or "channels kept per layer")
    ax.legend()
    fig.savefig(save_path, dpi=150)
    plt.close(fig)
