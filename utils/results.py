"""results.csv, training's per-epoch log: upstream's columns (hooks append theirs), one row per epoch."""

from __future__ import annotations

from pathlib import Path

from utils.files import atomic_write

RESULT_KEYS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
               "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
               "x/lr0", "x/lr1", "x/lr2")


def write_results_row(csv: Path, row: dict) -> None:
    """Append one epoch to results.csv (upstream's padded columns), writing the header first if needed."""
    header = "" if csv.exists() else ",".join(f"{k:>20}" for k in row) + "\n"
    line = ",".join(f"{v:>20.5g}" if k != "epoch" else f"{v:>20}" for k, v in row.items()) + "\n"
    with open(csv, "a") as f:
        f.write(header + line)


def trim_results(csv: Path, last_epoch: int) -> None:
    """Drop rows after the checkpoint's epoch: a run killed between its results row and its last.pt would
    otherwise log that epoch twice when resumed."""
    if not csv.exists():
        return
    lines = csv.read_text().splitlines(keepends=True)
    keep = lines[:1] + [x for x in lines[1:] if x.strip() and int(float(x.split(",")[0])) <= last_epoch]
    if len(keep) < len(lines):
        atomic_write(csv, lambda f: f.writelines(keep), mode="w")
