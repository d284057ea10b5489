"""Run a YOLOv5 checkpoint on images, folders, globs or list files; save annotated images and optional labels.

    python detect.py --weights yolov5n.pt --source path/to/images
    python detect.py --weights best.pt --source 'data/*.jpg' --save-txt --save-conf
    python detect.py --weights best-int8.onnx --source path/to/images    # an export.py file, ONNX Runtime on CPU
    python detect.py --weights best_openvino_model --source path/to/images    # an export.py IR folder, OpenVINO

Writes runs/detect/exp/: annotated images, labels/*.txt with --save-txt, and detections.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from utils.annotate import class_color, draw_box
from utils.boxes import scale_boxes
from utils.checkpoint import load_model
from utils.dataloaders import LoadImages
from utils.errors import UserError, cli
from utils.files import atomic_write, increment_path
from utils.labels import label_lines
from utils.log import LOGGER, colorstr
from utils.nms import non_max_suppression
from utils.backends import is_exported, load_exported
from utils.torch_utils import model_info, select_device, time_sync

ROOT = Path(__file__).resolve().parent


@torch.no_grad()
def run(opt: argparse.Namespace) -> dict:
    if not 0 <= opt.conf_thres <= 1 or not 0 <= opt.iou_thres <= 1:
        raise UserError("--conf-thres and --iou-thres must be between 0 and 1")
    device = select_device(opt.device)
    half, fixed = opt.half and device.type != "cpu", None
    if is_exported(opt.weights):
        model, half = load_exported(opt.weights), False
        fixed = model.imgsz  # a fixed-shape export takes exactly its own size
        if fixed and opt.imgsz != max(fixed):
            LOGGER.info(f"{opt.weights} was exported for {fixed[0]}x{fixed[1]} input: using that size")
    else:
        model = load_model(opt.weights, device, fuse=True)
        model_info(model, opt.imgsz)
        model.half() if half else model.float()
    names = model.names
    stride = max(int(model.stride.max()), 32)
    imgsz = fixed or int(-(-opt.imgsz // stride) * stride)
    source = LoadImages(opt.source, img_size=imgsz, stride=stride, auto=fixed is None)
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    if opt.save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
    results, dt = {}, [0.0, 0.0, 0.0]
    for path, im, im0 in tqdm(source, total=len(source), desc="detect", disable=len(source) < 2):
        t0 = time_sync()
        x = torch.from_numpy(im).to(device)
        x = (x.half() if half else x.float())[None] / 255
        t1 = time_sync()
        pred = model(x)[0]
        t2 = time_sync()
        det = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, opt.classes, opt.agnostic_nms,
                                  max_det=opt.max_det)[0]
        dt = [dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + time_sync() - t2]
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im0.shape).round()
        p = Path(path)
        counts = {}
        for c in det[:, 5].int().tolist():
            counts[names[c]] = counts.get(names[c], 0) + 1
        summary = ", ".join(f"{n} {k}{'s' * (n > 1)}" for k, n in counts.items()) or "(no detections)"
        LOGGER.info(f"{p.name}: {x.shape[2]}x{x.shape[3]} {summary}, {(t2 - t1) * 1e3:.1f}ms")
        results[str(p)] = [{"class": int(c), "name": names[int(c)], "conf": round(conf, 5),
                            "xyxy": [round(v, 1) for v in xyxy]} for *xyxy, conf, c in det.tolist()]
        if opt.save_txt:
            lines = label_lines(det, im0.shape, opt.save_conf)
            (save_dir / "labels" / f"{p.stem}.txt").write_text("".join(f"{x}\n" for x in lines))
        if not opt.nosave:
            for *xyxy, conf, c in reversed(det.tolist()):
                label = "" if opt.hide_labels else names[int(c)] if opt.hide_conf else f"{names[int(c)]} {conf:.2f}"
                draw_box(im0, xyxy, label, class_color(int(c)), opt.line_thickness)
            cv2.imwrite(str(save_dir / p.name), im0)
    n = max(len(results), 1)
    LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s"
                % (*(t / n * 1e3 for t in dt), (1, 3, *(fixed or (imgsz, imgsz)))))
    atomic_write(save_dir / "detections.json", lambda f: json.dump(results, f, indent=1), mode="w")
    LOGGER.info(f"{len(results)} images, results saved to {colorstr('bold', str(save_dir))}")
    return results


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, required=True, help="checkpoint path")
    p.add_argument("--source", type=str, default=str(ROOT / "data/images"), help="file, folder, glob or list file")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--project", default=str(ROOT / "runs/detect"), help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=None, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> dict:
    return run(parse_opt(argv))


if __name__ == "__main__":
    main()
