"""Rebuild the held-out datasets in YOLO format from their original releases (nothing is downloaded).

    python -m utils.convert voc BCCD_Dataset/BCCD ../datasets/bccd --names RBC WBC Platelets
    python -m utils.convert deeppcb DeepPCB/PCBData ../datasets/deeppcb --val-share 0.2 --seed 0

Both write DST/images/<split>/<name>.<ext> (the original image bytes: grayscale stays grayscale),
DST/labels/<split>/<name>.txt (one `class cx cy w h` line per box, normalised to [0, 1], 6 decimals),
DST/names.txt (one class a line, in index order) and DST/convert.json (the summary's figures).
Boxes are clipped to the image; boxes left with no area are dropped and counted. Each label file is written before
its image, each through a temp file and a rename: an interrupted run leaves no half-written file and no image
without its labels (which a YOLO loader would take for a background image). Run it again to finish.

voc: Pascal VOC, as BCCD_Dataset/BCCD: SRC/Annotations/<id>.xml, SRC/JPEGImages/<id>.jpg and the split lists
  SRC/ImageSets/Main/{train,val,test}.txt (one id a line; trainval.txt and per-class lists are ignored). Without
  those lists every annotation goes to --split. Class indices follow --names when given (BCCD in this project:
  --names RBC WBC Platelets); otherwise the class names in the order first met, reading the xml files sorted by name.
  Box corners are taken as the pixel coordinates they are (no 1-based shift). Objects marked difficult are kept.
  The image size is the xml's <size>, checked against the image file itself (the file wins when they differ).

deeppcb: DeepPCB's PCBData: group<g>/<g>/<name>_test.jpg (the defective image used for detection; the _temp.jpg
  templates are not converted), annotations group<g>/<g>_not/<name>.txt with one `x1 y1 x2 y2 type` line per defect
  (pixels; commas also accepted), type 1-6 -> class 0-5: open, short, mousebite, spur, copper, pin-hole.
  The split lists trainval.txt and test.txt beside PCBData (lines `group20085/20085/20085000.jpg
  group20085/20085_not/20085000.txt`) give the splits: trainval is shuffled with --seed and --val-share of it goes
  to val, the rest to train; test.txt becomes the test split. Images keep their list name (20085000.jpg). Without
  the lists, every group*/*/*_test.jpg goes to --split. The project's shared copy was split 800/200 by a seeded
  shuffle too, but not necessarily this one: a rebuilt val split may hold other images than the shared copy's.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from utils.errors import UserError, cli
from utils.label_cache import atomic_write_readable
from utils.labels import IMG_FORMATS
from utils.log import LOGGER

DEEPPCB_NAMES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
VOC_SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One image to convert: where it is, its output split and name, its boxes (cls, x1, y1, x2, y2 in pixels),
    the image size its annotation states (w, h; None if it states none) and the annotation file for messages."""

    image: Path
    split: str
    name: str
    boxes: list[tuple[int, float, float, float, float]]
    size: tuple[int, int] | None
    source: Path


@dataclass
class Summary:
    """What a conversion wrote (images and boxes per split) and what it left out or changed."""

    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    skipped_images: int = 0
    clipped_boxes: int = 0
    dropped_boxes: int = 0  # no area left after clipping
    unknown_boxes: int = 0  # classes not in --names, left out with --skip-unknown
    unlisted: int = 0  # annotations in no split list

    def line(self, dst: Path) -> str:
        per_split = ", ".join(f"{s} {self.images[s]} images {self.boxes[s]} boxes" for s in self.images)
        return (f"Converted to {dst}: {per_split or 'nothing'}; skipped {self.skipped_images} images, "
                f"{self.dropped_boxes} degenerate boxes dropped, {self.clipped_boxes} boxes clipped, "
                f"{self.unknown_boxes} unknown-class boxes left out, {self.unlisted} annotations in no split list")


# ---------------------------------------------------------------- Pascal VOC

def _number(obj: ET.Element, tag: str, xml: Path) -> float:
    text = obj.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise UserError(f"{xml}: <{tag}> is {text!r}, expected a number") from None


@dataclass
class VocAnnotation:
    size: tuple[int, int] | None  # (w, h) from <size>, None when absent or zero
    objects: list[tuple[str, float, float, float, float]]  # (class name, xmin, ymin, xmax, ymax)
    filename: str | None


def read_voc_xml(xml: Path) -> VocAnnotation:
    """The image size, objects and image file name of one VOC annotation file."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise UserError(f"{xml}: unreadable annotation ({e})") from None
    size = root.find("size")
    wh = (int(_number(size, "width", xml)), int(_number(size, "height", xml))) if size is not None else None
    objects = []
    for obj in root.iter("object"):
        name, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if not name or box is None:
            raise UserError(f"{xml}: an <object> without <name> or <bndbox>")
        objects.append((name, *(_number(box, t, xml) for t in ("xmin", "ymin", "xmax", "ymax"))))
    return VocAnnotation(wh if wh and min(wh) > 0 else None, objects, root.findtext("filename"))


def _voc_splits(src: Path, default_split: str, ids: list[str]) -> dict[str, list[str]]:
    """Split -> ids from ImageSets/Main/{train,val,test}.txt, or every id in default_split without those lists."""
    lists = {s: src / "ImageSets" / "Main" / f"{s}.txt" for s in VOC_SPLITS}
    lists = {s: f for s, f in lists.items() if f.is_file()}
    if not lists:
        return {default_split: ids}
    return {s: list(dict.fromkeys(x.split()[0] for x in _read_text(f).splitlines() if x.strip()))  # once each
            for s, f in lists.items()}


def _find_image(folder: Path, stem: str, xml_name: str | None) -> Path:
    """folder/<stem>.jpg, else another image extension, else the <filename> the xml names."""
    for ext in ("jpg", *sorted(IMG_FORMATS - {"jpg"})):
        for e in (ext, ext.upper()):
            if (folder / f"{stem}.{e}").is_file():
                return folder / f"{stem}.{e}"
    return folder / (xml_name or f"{stem}.jpg")


def _voc_boxes(ann: VocAnnotation, xml: Path, names: list[str], skip_unknown: bool,
               summary: Summary) -> list[tuple[int, float, float, float, float]]:
    boxes = []
    for name, *xyxy in ann.objects:
        if name in names:
            boxes.append((names.index(name), *xyxy))
        elif skip_unknown:
            summary.unknown_boxes += 1
        else:
            raise UserError(f"{xml}: class '{name}' is not in --names {' '.join(names)} "
                            "(add it, or pass --skip-unknown to leave such boxes out)")
    return boxes


def voc_samples(src: Path, names: list[str] | None, skip_unknown: bool, split: str,
                summary: Summary) -> tuple[list[Sample], list[str]]:
    """The samples of a Pascal VOC tree and the class names (given or discovered)."""
    ann_dir = src / "Annotations"
    if not ann_dir.is_dir():
        raise UserError(f"{src}: no Annotations folder (expected a Pascal VOC tree such as BCCD_Dataset/BCCD)")
    xmls = {p.stem: p for p in sorted(ann_dir.glob("*.xml"))}
    if not xmls:
        raise UserError(f"{ann_dir}: no .xml annotation files")
    splits = _voc_splits(src, split, list(xmls))
    wanted = {i for ids in splits.values() for i in ids}
    summary.unlisted = len(set(xmls) - wanted)
    parsed = {i: read_voc_xml(xmls[i]) for i in sorted(wanted) if i in xmls}  # sorted: discovery order is defined
    if names is None:
        names = list(dict.fromkeys(obj[0] for ann in parsed.values() for obj in ann.objects))
    samples = []
    for s, ids in splits.items():
        for i in ids:
            if i not in parsed:
                LOGGER.warning(f"WARNING: {ann_dir / (i + '.xml')}: listed for {s} but missing, image skipped")
                summary.skipped_images += 1
                continue
            ann = parsed[i]
            boxes = _voc_boxes(ann, xmls[i], names, skip_unknown, summary)
            samples.append(Sample(_find_image(src / "JPEGImages", i, ann.filename), s, i, boxes, ann.size, xmls[i]))
    return samples, names


# ---------------------------------------------------------------- DeepPCB

def read_deeppcb_txt(path: Path) -> list[tuple[int, float, float, float, float]]:
    """[(class 0-5, x1, y1, x2, y2), ...] from one DeepPCB annotation file (`x1 y1 x2 y2 type`, type 1-6)."""
    boxes = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
        if not fields:
            continue
        try:
            x1, y1, x2, y2, t = (float(f) for f in fields)
        except ValueError:
            raise UserError(f"{path}: line {n} is {line.strip()!r}, expected 'x1 y1 x2 y2 type'") from None
        if t not in range(1, 7):
            raise UserError(f"{path}: line {n}: defect type {fields[4]} is not 1-6")
        boxes.append((int(t) - 1, x1, y1, x2, y2))
    return boxes


def _deeppcb_lists(root: Path, val_share: float, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Split -> [(image path, annotation path) relative to PCBData] from trainval.txt / test.txt beside PCBData."""
    splits: dict[str, list[tuple[str, str]]] = {}
    for list_name in ("trainval", "test"):
        f = root.parent / f"{list_name}.txt"
        if not f.is_file():
            continue
        entries = []
        for n, line in enumerate(_read_text(f).splitlines(), 1):
            if line.strip():
                parts = line.split()
                if len(parts) != 2:
                    raise UserError(f"{f}: line {n} is {line.strip()!r}, expected 'image.jpg annotation.txt'")
                entries.append((parts[0], parts[1]))
        if list_name == "test":
            splits["test"] = entries
            continue
        random.Random(seed).shuffle(entries)
        n_val = round(len(entries) * val_share)
        splits["train"], splits["val"] = entries[n_val:], entries[:n_val]
    return {s: e for s, e in splits.items() if e}


def _deeppcb_glob(root: Path) -> list[tuple[str, str]]:
    """Every group*/<g>/<name>_test.jpg with its group*/<g>_not/<name>.txt, relative to PCBData."""
    pairs = []
    for im in sorted(root.glob("group*/*/*_test.jpg")):
        name = im.stem[: -len("_test")]
        pairs.append((str(im.relative_to(root)), str(im.parent.relative_to(root)) + f"_not/{name}.txt"))
    return pairs


def deeppcb_samples(src: Path, val_share: float, seed: int, split: str, summary: Summary) -> list[Sample]:
    """The samples of DeepPCB's PCBData (SRC may also be the DeepPCB folder that holds it)."""
    root = src / "PCBData" if (src / "PCBData").is_dir() else src
    splits = _deeppcb_lists(root, val_share, seed) or {split: _deeppcb_glob(root)}
    if not any(splits.values()):
        raise UserError(f"{src}: no trainval.txt/test.txt beside it and no group*/*/*_test.jpg in it "
                        "(expected DeepPCB's PCBData folder)")
    samples = []
    for s, entries in splits.items():
        for im_rel, ann_rel in entries:
            listed, ann = root / im_rel, root / ann_rel
            name = listed.stem[: -len("_test")] if listed.stem.endswith("_test") else listed.stem
            image = listed if listed.is_file() else listed.with_name(f"{name}_test{listed.suffix}")
            if not ann.is_file():
                LOGGER.warning(f"WARNING: {ann}: annotation file missing, image {image} skipped")
                summary.skipped_images += 1
                continue
            samples.append(Sample(image, s, name, read_deeppcb_txt(ann), None, ann))
    return samples


# ---------------------------------------------------------------- writing

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__})") from None


def _image_size(sample: Sample) -> tuple[int, int] | None:
    """(w, h) from the image file's header, or None (with a warning naming the file) when it cannot be read."""
    try:
        with Image.open(sample.image) as im:
            w, h = im.size
    except FileNotFoundError:
        LOGGER.warning(f"WARNING: {sample.image}: image missing ({sample.source} refers to it), skipped")
        return None
    except Exception as e:  # PIL raises several types for corrupt or foreign files
        LOGGER.warning(f"WARNING: {sample.image}: unreadable image ({type(e).__name__}), skipped")
        return None
    if sample.size and sample.size != (w, h):
        LOGGER.warning(f"WARNING: {sample.source}: says {sample.size[0]}x{sample.size[1]} but {sample.image} is "
                       f"{w}x{h}; using the image's size")
    return w, h


def yolo_lines(boxes: list[tuple[int, float, float, float, float]], w: int, h: int,
               summary: Summary) -> list[str]:
    """YOLO lines for pixel boxes clipped to a w x h image; boxes left without area are dropped and counted."""
    lines = []
    for c, x1, y1, x2, y2 in boxes:
        cx1, cy1, cx2, cy2 = min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)
        if cx2 <= cx1 or cy2 <= cy1:
            summary.dropped_boxes += 1
            continue
        summary.clipped_boxes += (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
        lines.append(f"{c} {(cx1 + cx2) / 2 / w:.6f} {(cy1 + cy2) / 2 / h:.6f} {(cx2 - cx1) / w:.6f} "
                     f"{(cy2 - cy1) / h:.6f}")
    return lines


def write_dataset(samples: list[Sample], names: list[str], dst: Path, summary: Summary) -> None:
    """Write every readable sample's label file, then its image, both atomically; then names.txt."""
    for sample in samples:
        summary.images.setdefault(sample.split, 0)
        summary.boxes.setdefault(sample.split, 0)
        wh = _image_size(sample)
        if wh is None:
            summary.skipped_images += 1
            continue
        lines = yolo_lines(sample.boxes, *wh, summary)
        label = dst / "labels" / sample.split / f"{sample.name}.txt"
        image = dst / "images" / sample.split / f"{sample.name}{sample.image.suffix}"
        atomic_write_readable(label, lambda f: f.write("".join(x + "\n" for x in lines).encode()))
        with open(sample.image, "rb") as src:
            atomic_write_readable(image, lambda f: shutil.copyfileobj(src, f))
        summary.images[sample.split] += 1
        summary.boxes[sample.split] += len(lines)
    atomic_write_readable(dst / "names.txt", lambda f: f.write("".join(n + "\n" for n in names).encode()))


def convert(opt: argparse.Namespace) -> dict:
    """Run one conversion; returns the summary's figures (also written to DST/convert.json)."""
    src, dst = Path(opt.src), Path(opt.dst)
    if not src.is_dir():
        raise UserError(f"source folder not found: {src}")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"output {dst} exists and is not a folder")
    summary = Summary()
    if opt.format == "voc":
        samples, names = voc_samples(src, opt.names, opt.skip_unknown, opt.split, summary)
    else:
        samples, names = deeppcb_samples(src, opt.val_share, opt.seed, opt.split, summary), DEEPPCB_NAMES
    write_dataset(samples, names, dst, summary)
    if summary.dropped_boxes:
        LOGGER.warning(f"WARNING: {summary.dropped_boxes} boxes had no area inside their image and were dropped")
    record = {"format": opt.format, "source": str(src.resolve()), "names": names, **vars(summary)}
    if opt.format == "deeppcb":
        record.update(val_share=opt.val_share, seed=opt.seed)
    atomic_write_readable(dst / "convert.json", lambda f: f.write(json.dumps(record, indent=2).encode()))
    LOGGER.info(summary.line(dst))
    return record


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m utils.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True, metavar="{voc,deeppcb}")
    voc = sub.add_parser("voc", help="Pascal VOC xml (BCCD_Dataset/BCCD)",
                         description="Pascal VOC xml -> YOLO. See `python -m utils.convert --help` for the layout.")
    pcb = sub.add_parser("deeppcb", help="DeepPCB's PCBData (x1 y1 x2 y2 type files)",
                         description="DeepPCB -> YOLO. See `python -m utils.convert --help` for the layout.")
    for sp in (voc, pcb):
        sp.add_argument("src", help="source folder (voc: the folder with Annotations/; deeppcb: PCBData)")
        sp.add_argument("dst", help="output dataset root: images/<split>, labels/<split>, names.txt")
        sp.add_argument("--split", default="train", help="split for everything when the source has no split lists")
    voc.add_argument("--names", nargs="+", help="class names in index order (default: as first met in the xml files)")
    voc.add_argument("--skip-unknown", action="store_true", help="leave out boxes of classes not in --names")
    pcb.add_argument("--val-share", type=float, default=0.2, help="share of trainval.txt that goes to val")
    pcb.add_argument("--seed", type=int, default=0, help="seed of the trainval shuffle")
    opt = p.parse_args(argv)
    if opt.format == "deeppcb" and not 0 <= opt.val_share < 1:
        raise UserError(f"--val-share must be in [0, 1), not {opt.val_share}")
    if opt.format == "voc" and opt.names and len(set(opt.names)) != len(opt.names):
        raise UserError(f"--names has duplicates: {' '.join(opt.names)}")
    return opt


@cli
def main(argv: list[str] | None = None) -> dict:
    return convert(parse_opt(argv))


if __name__ == "__main__":
    main()
