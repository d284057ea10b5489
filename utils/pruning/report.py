"""prune.py's outputs besides the model: report.json (the figures), report.md (the same for people), channels.png."""

from __future__ import annotations

import json
from pathlib import Path

from utils.files import atomic_write

EVAL_KEYS = ("P", "R", "mAP50", "mAP50-95")
DENSE_NOTE = ("Unstructured zeros do not make dense kernels faster or the model smaller in memory: the shapes are "
              "unchanged and zeros are multiplied like any other number. Speed needs a sparse runtime; size needs "
              "compression (the zeros compress well).")


def write_report(save_dir: Path, record: dict) -> None:
    """record: what prune.py measured (see prune.py's `run`); writes report.json and report.md."""
    atomic_write(save_dir / "report.json", lambda f: json.dump(record, f, indent=2), mode="w")
    atomic_write(save_dir / "report.md", lambda f: f.write(markdown(record)), mode="w")


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.3f}x" if a else "-"


def _method_lines(s: dict, b: dict, a: dict) -> list[str]:
    m = s["method"]
    if m == "unstructured":
        return [f"Method `unstructured`: the {s['percent']:.1%} smallest conv weights (global L1 magnitude) set to "
                f"zero; {s['zeros']:,} of {s['conv_weights']:,} conv weights are zero ({s['zero_share']:.2%}).",
                "", DENSE_NOTE]
    lines = []
    if "removed_blocks" in s:
        lines.append(f"Removed {len(s['removed_blocks'])} residual bottleneck(s) (mean |gamma|): " + ", ".join(
            f"{x['name']} ({x['score']:.3g})" for x in s["removed_blocks"]) + ".")
    if m == "layer":
        return lines
    if s.get("flops_target"):
        lines.append(f"FLOPs target {s['flops_target']:g} of the original ({s['target_GFLOPs']:.3f} GFLOPs); "
                     + (f"percent {s['percent_used']:.4f} lands on it." if "percent_used" in s else ""))
    if m == "sensitivity":
        ratios = ", ".join(map(str, s["ratios"]))
        lines.append(f"Method `sensitivity`: each layer cut by the largest of the ratios {ratios} whose mAP50 drop "
                     f"(that layer alone, adaptive BN, held-out training images; unpruned {s['sensitivity_base']:.3f}) "
                     f"is at most {s['max_drop_used']:.4f}, all in one pass, then adaptive BN on {s['calib_batches']} "
                     "batches. Per-layer ratios below; curves in sensitivity.csv/png.")
    elif m == "eagleeye":
        c = s["candidates"][s["best"]]
        lines.append(f"Method `eagleeye`: {len(s['candidates'])} random sub-nets at the target, {s['calib_batches']} "
                     f"calibration batches for adaptive BN, scored by mAP50 on held-out training images. Chosen: "
                     f"candidate {s['best']} (mAP50 {c['score_inherited']:.3f} with inherited BN statistics, "
                     f"{c['score_adaptive']:.3f} after adaptive BN). Mean gain from adaptive BN over the candidates: "
                     f"{s['adaptive_bn_gain']:+.3f}.")
    else:
        pct = s.get("percent_used", s["percent"])
        lines += [f"Method `{m}`, percent {pct:.4g}, threshold {s['threshold']:.4g} (channels scoring below it "
                  f"removed), group score `{s['group_score']}`, skip shortcut {s['skip_shortcut']}, min channels "
                  f"{s['min_channels']}, round to {s['round_to']}.",
                  f"Largest safe percent (no layer emptied by the threshold alone): {s['safe_percent']:.3f}."]
        if m == "taylor":
            lines.append(f"Channel score: first-order Taylor |sum of gamma*dL/dgamma + beta*dL/dbeta over a group's "
                         f"BNs|, averaged over {s['calib_batches']} training batches.")
    if s.get("adaptive_bn") and m not in ("eagleeye", "sensitivity"):
        lines.append(f"BN statistics recomputed on {s['calib_batches']} training batches (--adaptive-bn).")
    lines.append(f"Removed {s['group_channels'] - s['group_channels_kept']} of {s['group_channels']} group channels "
                 f"({s['removed_share']:.1%}); BN channels {b['bn_channels']} -> {a['bn_channels']}.")
    if "collapsed_share" in s:
        lines.append(f"Collapsed before the cut (score below {s['collapse_threshold']:.3g}, 1% of the 90th "
                     f"percentile): {s['collapsed_share']:.1%} of the group channels; live channels removed: "
                     f"{s['live_removed']}" + (" (expect a large drop until fine-tuned)." if s["live_removed"] else
                                               " (the cut took only collapsed channels)."))
    return lines


def decision(s: dict) -> str:
    """One console line on what the method decided (report.md says it at length)."""
    if s["method"] == "unstructured":
        return f"{s['zero_share']:.2%} of conv weights are zero; dense kernels do not run faster (see report.md)"
    parts = [f"removed {len(s['removed_blocks'])} bottleneck(s)"] if "removed_blocks" in s else []
    if s["method"] == "layer":
        return ", ".join(parts)
    if s["method"] == "eagleeye":
        c = s["candidates"][s["best"]]
        parts.append(f"best of {len(s['candidates'])} candidates: mAP50 {c['score_adaptive']:.3f} on held-out images "
                     f"after adaptive BN ({c['score_inherited']:.3f} before); mean adaptive-BN gain "
                     f"{s['adaptive_bn_gain']:+.3f}")
    elif s["method"] == "sensitivity":
        cut = sum(x["ratio"] > 0 for x in s["layer_ratios"])
        parts.append(f"{cut} of {len(s['layer_ratios'])} layers cut, each costing at most {s['max_drop_used']:.4f} "
                     f"mAP50 alone (unpruned {s['sensitivity_base']:.3f})")
    else:
        if "percent_used" in s:
            why = "--percent auto: the collapsed share" if s.get("auto") else "for the FLOPs target"
            parts.append(f"percent {s['percent_used']:.4f} ({why})")
        parts.append(f"threshold {s['threshold']:.4g}")
    safe = f" (safe maximum {s['safe_percent']:.3f})" if s["safe_percent"] == s["safe_percent"] else ""
    parts.append(f"{s['removed_share']:.1%} of group channels removed{safe}")
    return ", ".join(parts)


def markdown(r: dict) -> str:
    s, b, a = r["settings"], r["before"], r["after"]
    lines = [f"# Pruning report: {r['weights']}", "", *_method_lines(s, b, a), "",
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
    if s["method"] == "eagleeye":
        lines += ["", "## Candidates", "", "| # | GFLOPs | mAP50 inherited BN | mAP50 adaptive BN |",
                  "|---|---|---|---|"]
        lines += [f"| {i}{' (chosen)' if i == s['best'] else ''} | {c['gflops']:.3f} | {c['score_inherited']:.4f} | "
                  f"{c['score_adaptive']:.4f} |" for i, c in enumerate(s["candidates"])]
    if s["method"] == "sensitivity":
        lines += ["", "## Ratio per layer", "", "| layer | ratio | kept | total |", "|---|---|---|---|"]
        lines += [f"| {x['layer']} | {x['ratio']:g} | {x['kept']} | {x['channels']} |" for x in s["layer_ratios"]]
    if s["method"] == "unstructured":
        lines += ["", "## Zero weights per conv", "", "| conv | zeros | weights | zero share |", "|---|---|---|---|"]
        lines += [f"| {x['name']} | {x['zeros']} | {x['weights']} | {x['zeros'] / x['weights']:.2f} |"
                  for x in r["layers"]]
    else:
        lines += ["", "## Channels per layer", "", "| layer | kept | total | kept share |", "|---|---|---|---|"]
        lines += [f"| {x['name']} | {x['kept']} | {x['channels']} | {x['kept'] / x['channels']:.2f} |"
                  for x in r["layers"]]
    return "\n".join(lines) + "\n"


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
