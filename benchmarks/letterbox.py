"""How a model's val mAP and box sizes move with the frame around the image: the gap between val.py's rectangular
batches and the square letterbox of fixed-shape exports, measured frame by frame.

    python benchmarks/letterbox.py --weights base.pt last.pt --data data/deeppcb.yaml --imgsz 320 --frames 0 16 32

Every val image is resized as val.py resizes it (long side --imgsz) and placed in the middle of a canvas --frame
pixels wider on every side, rounded up to the model's stride, filled with every --fills grey level (114 is the
letterbox's). A square image at frame 0 is what `val.py --square` and the exports read; at frame 16 (half of stride
32) it is val.py's rectangular batch. For each model and frame: mAP50 and mAP50-95 as val.py computes them, and how
far the sizes of its confident boxes are from the labels': every label's best box of its class (confidence >= 0.25,
IoU >= 0.5), mean (box - label) / label for width and height. A model whose boxes shrink as the frame widens has
learned the grey border as a cue for scale. Batch 1, CPU. Writes letterbox.json and letterbox.md under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.augmentations import letterbox  # noqa: E402
from utils.boxes import box_iou, scale_boxes, xywhn2xyxy  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.data import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402
from utils.files import atomic_write  # noqa: E402
from utils.log import LOGGER, colorstr  # noqa: E402
from utils.metrics import ap_per_class, match_predictions  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402

PREFIX = colorstr("letterbox: ")
IOUV = torch.linspace(0.5, 0.95, 10)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", required=True, help="trained checkpoints (.pt)")
    p.add_argument("--data", required=True, help="dataset yaml (its val split is read)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--frames", type=int, nargs="+", default=[0, 16, 32], help="frame widths in pixels")
    p.add_argument("--fills", type=int, nargs="+", default=[114, 0], help="frame grey levels (114: the letterbox's)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="NMS confidence threshold for the mAP")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--size-conf", type=float, default=0.25, help="confidence of the boxes whose sizes are compared")
    p.add_argument("--out", default=str(ROOT / "runs/benchmarks/letterbox"))
    opt = p.parse_args(argv)
    if min(opt.frames) < 0 or not all(0 <= f <= 255 for f in opt.fills):
        raise UserError("--frames must be >= 0 and --fills grey levels in 0-255")
    return opt


def readings(frames: list[int], fills: list[int]) -> list[tuple[int, int]]:
    """(frame, fill) pairs; a zero frame has no fill, so it is read once."""
    return list(dict.fromkeys((f, fill if f else 114) for f in frames for fill in fills))


def framed(im: np.ndarray, frame: int, fill: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`im` centred on a canvas `frame` pixels wider on every side, rounded up to `stride`; returns it and the
    (left, top) offset of the image."""
    shape = tuple(math.ceil((n + 2 * frame) / stride) * stride for n in im.shape[:2])
    canvas, _, (dw, dh) = letterbox(im, shape, color=(fill,) * 3, auto=False, scaleup=False)
    return canvas, (round(dw - 0.1), round(dh - 0.1))  # the padding letterbox applied on the left and top


def size_errors(pred: torch.Tensor, labels: torch.Tensor, conf: float) -> list[tuple[float, float]]:
    """(width, height) relative errors of every label's best confident box of its class with IoU >= 0.5."""
    pred = pred[pred[:, 4] >= conf]
    if not len(pred) or not len(labels):
        return []
    iou = box_iou(labels[:, 1:], pred[:, :4]) * (labels[:, :1] == pred[:, 5])
    best, k = iou.max(1)
    out = []
    for j in torch.nonzero(best >= 0.5).flatten().tolist():
        (gx1, gy1, gx2, gy2), (px1, py1, px2, py2) = labels[j, 1:].tolist(), pred[k[j], :4].tolist()
        out.append(((px2 - px1) / (gx2 - gx1) - 1, (py2 - py1) / (gy2 - gy1) - 1))
    return out


@torch.no_grad()
def read(model, dataset, frame: int, fill: int, opt: argparse.Namespace) -> dict:
    """mAP50, mAP50-95 and box-size errors of `model` on every image of `dataset` in one frame."""
    stride = max(int(model.stride.max()), 32)
    stats, errors = [], []
    for i in range(len(dataset)):
        im, (h0, w0), (h, w) = dataset.load_image(i)
        canvas, pad = framed(im, frame, fill, stride)
        x = torch.from_numpy(np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
        pred = non_max_suppression(model(x)[0], opt.conf_thres, opt.iou_thres, multi_label=True, max_det=300,
                                   time_limit=math.inf)[0]
        scale_boxes(canvas.shape[:2], pred[:, :4], (h0, w0), ((h / h0, w / w0), pad))
        lab = torch.as_tensor(dataset.labels[i], dtype=torch.float32).reshape(-1, 5)
        labels = torch.cat((lab[:, :1], xywhn2xyxy(lab[:, 1:5], w0, h0)), 1)
        correct = torch.as_tensor(match_predictions(pred, labels, IOUV)) if len(pred) and len(labels) else \
            torch.zeros(len(pred), len(IOUV), dtype=torch.bool)
        stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
        errors += size_errors(pred, labels, opt.size_conf)
    tp, conf, pcls, tcls = (torch.cat(s, 0).numpy() for s in zip(*stats))
    ap = ap_per_class(tp, conf, pcls, tcls).ap if len(tp) else np.zeros((1, len(IOUV)))
    e = np.array(errors).reshape(-1, 2)
    return {"frame": frame, "fill": fill, "mAP50": float(ap[:, 0].mean()), "mAP50-95": float(ap.mean()),
            "matched": len(e), "labels": int(len(tcls)),
            "width_error": float(e[:, 0].mean()) if len(e) else None,
            "height_error": float(e[:, 1].mean()) if len(e) else None}


def table(records: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:+.1f}%"  # noqa: E731
    lines = ["| model | frame | mAP50 | mAP50-95 | labels matched | box width vs label | box height vs label |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        frame = f"{r['frame']} px, grey {r['fill']}" if r["frame"] else "none"
        lines.append(f"| {r['model']} | {frame} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['matched']} / "
                     f"{r['labels']} | {pct(r['width_error'])} | {pct(r['height_error'])} |")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    opt = parse_opt(argv)
    data = check_dataset(opt.data, splits=("val",))
    dataset = create_dataloader(data["val"], opt.imgsz, 1, 32, workers=0, nc=data["nc"],
                                prefix=colorstr("val: "))[1]
    todo = readings(opt.frames, opt.fills)
    LOGGER.info(f"{PREFIX}{len(opt.weights)} model(s) x {len(todo)} frames on {len(dataset)} val images, batch 1")
    records = []
    for w in opt.weights:
        model = load_model(w, "cpu", fuse=True).float().eval()
        for frame, fill in tqdm(todo, desc=f"{PREFIX}{Path(w).name}", bar_format="{l_bar}{bar:10}{r_bar}"):
            records.append({"model": str(w), **read(model, dataset, frame, fill, opt)})
    md = table(records)
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "letterbox.json", lambda f: json.dump({"data": str(opt.data), "imgsz": opt.imgsz,
                                                               "records": records}, f, indent=1), mode="w")
    atomic_write(out / "letterbox.md", lambda f: f.write(f"{opt.data}, val split, {opt.imgsz} px\n\n{md}\n"),
                 mode="w")
    print(f"\n{md}\n\nwritten: {out / 'letterbox.md'}, {out / 'letterbox.json'}")
    return records


if __name__ == "__main__":
    main()
