"""How far a model's val mAP moves with the training batches its BatchNorm statistics were estimated on, and with the
letterbox: the measurement noise under a held-out figure, one command.

    python benchmarks/bn_noise.py --weights last.pt --data data/deeppcb.yaml --imgsz 320 --batches 8 32 --draws 4

The checkpoint is evaluated as saved; then, for every --batches N and every draw (training-loader seeds 0 ..
draws - 1), its BN running statistics are recomputed on the first N augmented training batches of that draw (what
finetune.py --bn-recal does after every epoch) and the model is evaluated again. Every evaluation is done twice, in
upstream's rectangular batches (val.py) and letterboxed square (val.py --square). The spread over the draws of one N
is what the saved BN estimate alone can move a figure; the rect / square gap is what the letterbox moves it.
Augmentation: the hyp saved in the checkpoint (the one it was trained with), else --hyp. A draw is repeatable: the
same seed gives the same batches and the same figures. Writes bn_noise.json and bn_noise.md under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from copy import deepcopy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from utils.data import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.evaluate import evaluate_model, val_loader  # noqa: E402
from utils.files import atomic_write  # noqa: E402
from utils.hyp import load_hyp  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.pruning.data import first_batches  # noqa: E402
from utils.torch_utils import recalibrate_bn  # noqa: E402

PREFIX = colorstr("bn_noise: ")
READINGS = ("rect", "square")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a trained checkpoint")
    p.add_argument("--data", required=True, help="dataset yaml: train batches for the statistics, val for the mAP")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8, help="the training batch size (BN statistics per batch)")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="batches per estimate")
    p.add_argument("--draws", type=int, default=4, help="estimates per --batches value (loader seeds 0 .. draws-1)")
    p.add_argument("--hyp", default=str(ROOT / "data/hyps/hyp.finetune.yaml"),
                   help="augmentation, when the checkpoint saved no hyp")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs/benchmarks/bn_noise"))
    opt = p.parse_args(argv)
    if opt.draws < 1 or opt.batch_size < 1 or min(opt.batches) < 1:
        raise UserError("--draws, --batch-size and every --batches value must be >= 1")
    return opt


def train_batches(data: dict, hyp: dict, imgsz: int, batch_size: int, stride: int, n: int, seed: int,
                  workers: int) -> list[torch.Tensor]:
    """The first n augmented training batches of the loader seeded `seed`, as float images in [0, 1]."""
    loader = create_dataloader(data["train"], imgsz, batch_size, stride, hyp=hyp, augment=True, shuffle=True,
                               workers=workers, nc=data["nc"], seed=seed, prefix=colorstr("train: "))[0]
    return [x for x, _ in first_batches(loader, n * batch_size)]


def noise_rows(model, data: dict, hyp: dict, opt: argparse.Namespace) -> list[dict]:
    """One row per evaluation: {"batches": 0 for the saved statistics else N, "seed", "mAP50-95_rect", ...}."""
    stride = max(int(model.stride.max()), 32)
    loaders = {r: val_loader(data, "val", opt.imgsz, opt.batch_size * 2, stride, opt.workers, square=r == "square")
               for r in READINGS}

    def row(m, batches: int, seed: int | None) -> dict:
        rec = {"batches": batches, "seed": seed}
        for r, loader in loaders.items():
            res = evaluate_model(m, loader, data["names"])
            rec[f"mAP50_{r}"], rec[f"mAP50-95_{r}"] = res["mAP50"], res["mAP50-95"]
        return rec

    rows = [row(model, 0, None)]
    todo = [(n, s) for n in opt.batches for s in range(opt.draws)]
    for n, s in tqdm(todo, desc=f"{PREFIX}BN estimates", bar_format="{l_bar}{bar:10}{r_bar}"):
        m = deepcopy(model)
        recalibrate_bn(m, train_batches(data, hyp, opt.imgsz, opt.batch_size, stride, n, s, opt.workers))
        rows.append(row(m, n, s))
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per --batches value: min, mean, max of each reading over its draws."""
    out = []
    for n in dict.fromkeys(r["batches"] for r in rows if r["batches"]):
        group = [r for r in rows if r["batches"] == n]
        rec = {"batches": n, "draws": len(group)}
        for r in READINGS:
            v = [g[f"mAP50-95_{r}"] for g in group]
            rec[r] = {"min": min(v), "mean": sum(v) / len(v), "max": max(v)}
        out.append(rec)
    return out


def table(rows: list[dict], sums: list[dict]) -> str:
    lines = ["| BN statistics | mAP50-95 rect | mAP50-95 square | mAP50 rect | mAP50 square |", "|---|---|---|---|---|"]
    for r in rows:
        n = r["batches"]
        what = f"{n} batch{'es' * (n != 1)}, seed {r['seed']}" if n else "as saved"
        lines.append(f"| {what} | {r['mAP50-95_rect']:.3f} | {r['mAP50-95_square']:.3f} | {r['mAP50_rect']:.3f} | "
                     f"{r['mAP50_square']:.3f} |")
    lines += ["", "| batches | draws | mAP50-95 rect min - max (mean) | mAP50-95 square min - max (mean) |",
              "|---|---|---|---|"]
    for s in sums:
        cells = [f"{s[r]['min']:.3f} - {s[r]['max']:.3f} ({s[r]['mean']:.3f})" for r in READINGS]
        lines.append(f"| {s['batches']} | {s['draws']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> dict:
    opt = parse_opt(argv)
    ckpt = load_checkpoint(opt.weights)
    model = model_from_checkpoint(ckpt).float().eval()
    data = check_dataset(opt.data, splits=("train", "val"))
    saved = (ckpt.get("opt") or {}).get("hyp")
    hyp = load_hyp(saved if isinstance(saved, dict) else opt.hyp)
    LOGGER.info(f"{PREFIX}augmentation from {'the checkpoint' if isinstance(saved, dict) else opt.hyp}; "
                f"{len(opt.batches) * opt.draws} estimates of the BN statistics, each evaluated rect and square")
    rows = noise_rows(model, data, hyp, opt)
    sums = summary(rows)
    md = table(rows, sums)
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = {"weights": str(opt.weights), "data": str(opt.data), "imgsz": opt.imgsz, "batch_size": opt.batch_size,
           "rows": rows, "summary": sums}
    atomic_write(out / "bn_noise.json", lambda f: json.dump(rec, f, indent=1), mode="w")
    atomic_write(out / "bn_noise.md", lambda f: f.write(f"{opt.weights} on {opt.data}, val split, {opt.imgsz} px\n\n"
                                                       f"{md}\n"), mode="w")
    print(f"\n{md}\n\nwritten: {out / 'bn_noise.md'}, {out / 'bn_noise.json'}")
    return rec


if __name__ == "__main__":
    main()
