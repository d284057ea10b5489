"""The built-in synthetic detection dataset (data/synthetic.yaml), generated on first use instead of downloaded.

Six shape classes told apart by geometry, never by colour: every instance gets a random colour, size, aspect and
rotation, and sits on a cluttered background (gradients, colour blotches, grainy patches, thin lines, small irregular
blobs that are all smaller than the smallest object). Objects may overlap, but a placement is rejected when it
would hide more than `max_hidden` of an earlier object, so no label points at something mostly invisible. Each
label is the tight box of the object's visible pixels.

Every image has its own seed derived from (seed, split, index): generation runs in parallel and still writes
byte-identical files for the same settings. Files are written to a temporary sibling folder that is renamed into
place with a marker file last, so an interrupted run is never mistaken for a finished dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.errors import UserError
from utils.log import LOGGER

CLASSES = ("circle", "rectangle", "triangle", "cross", "ring", "star")
MARKER = ".generated.json"  # written last: its presence (with matching settings) means the dataset is complete
VERSION = 1  # bump when the drawing code changes its output, so existing datasets are regenerated
JPEG_QUALITY = 90
_MAX_ASPECT = {"circle": 1.6, "rectangle": 2.0, "triangle": 1.6, "cross": 1.5, "ring": 1.6, "star": 1.25}
_CIRCLE = np.stack([np.cos(t := np.linspace(0, 2 * np.pi, 48, endpoint=False)), np.sin(t)], 1)


@dataclass(frozen=True)
class SynthConfig:
    """The `generate:` section of a data yaml. Sizes are in pixels; `object_size` is an object's longer side as a
    fraction of the image's shorter side (drawn log-uniformly, so small objects are as common as large ones)."""

    seed: int = 0
    train: int = 800
    val: int = 200
    img_size: tuple[int, int] = (320, 416)
    objects: tuple[int, int] = (1, 6)
    object_size: tuple[float, float] = (0.08, 0.45)
    max_hidden: float = 0.4
    max_iou: float = 0.4

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "generate") -> SynthConfig:
        """Validate a yaml mapping; unknown keys and bad values are UserErrors naming the key."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise UserError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        try:
            cfg = cls(**kw)
            cfg._check()
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: {e}") from None
        return cfg

    def _check(self) -> None:
        for k in ("img_size", "objects", "object_size"):
            v = getattr(self, k)
            if not (isinstance(v, tuple) and len(v) == 2 and 0 < v[0] <= v[1]):
                raise ValueError(f"'{k}' must be [min, max] with 0 < min <= max, got {v}")
        if not all(isinstance(v, int) for v in (self.seed, self.train, self.val, *self.img_size, *self.objects)):
            raise ValueError("'seed', 'train', 'val', 'img_size' and 'objects' must be integers")
        if min(self.train, self.val) < 1 or self.seed < 0:
            raise ValueError("'train' and 'val' must be at least 1 and 'seed' non-negative")
        if self.img_size[0] < 64 or self.object_size[1] > 0.6:
            raise ValueError("images need at least 64 pixels a side and object_size at most 0.6")
        if not (0 <= self.max_hidden < 1 and 0 < self.max_iou <= 1):
            raise ValueError("'max_hidden' must be in [0, 1) and 'max_iou' in (0, 1]")


@dataclass
class Sample:
    """One drawn image: BGR pixels, class ids, xyxy pixel boxes (x2, y2 exclusive) and the owner map that says
    which object each pixel shows (-1 for background); object k's visible mask is `owner == k`."""

    image: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    owner: np.ndarray

    def yolo_lines(self) -> list[str]:
        """The label file's lines: `class cx cy w h`, normalised, 6 decimals."""
        h, w = self.image.shape[:2]
        out = []
        for c, (x1, y1, x2, y2) in zip(self.classes, self.boxes):
            out.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
        return out


def _unit_shape(rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The outline (and the hole, for rings) of a class in unit coordinates, with its random proportions."""
    if name == "circle":
        return _CIRCLE, None
    if name == "ring":
        return _CIRCLE, _CIRCLE * rng.uniform(0.45, 0.65)
    if name == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), None
    if name == "triangle":
        a = np.deg2rad([90, 210, 330]) + rng.uniform(-0.25, 0.25, 3)  # not always equilateral
        return np.stack([np.cos(a), np.sin(a)], 1), None
    if name == "cross":
        t = rng.uniform(0.25, 0.4)  # half the arm thickness
        q = [[t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t], [-t, -1], [t, -1], [t, -t], [1, -t], [1, t]]
        return np.array(q, float), None
    a = np.linspace(0, 2 * np.pi, 10, endpoint=False)  # star: 5 points alternating with 5 inner corners
    r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    return np.stack([r * np.cos(a), r * np.sin(a)], 1), None


def _shape_mask(rng: np.random.Generator, name: str, size: float) -> np.ndarray:
    """A boolean patch holding one stretched, rotated instance whose longer unrotated side is `size` pixels."""
    outline, hole = _unit_shape(rng, name)
    rx = size / 2
    ry = rx / rng.uniform(1.0, _MAX_ASPECT[name])
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    polys = [p * (rx, ry) @ rot.T for p in (outline, hole) if p is not None]
    lo = polys[0].min(0)
    wh = np.ceil(polys[0].max(0) - lo).astype(int) + 1
    mask = np.zeros((wh[1], wh[0]), np.uint8)
    for v, p in zip((1, 0), polys):  # the hole is drawn back as background
        cv2.fillPoly(mask, [np.round((p - lo) * 16).astype(np.int32)], v, cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(bool)


def _background(rng: np.random.Generator, h: int, w: int, max_clutter: float) -> np.ndarray:
    """Gradient + low-frequency blotches + grainy patches + thin lines + small irregular blobs, as float32 BGR."""
    c1, c2 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    xx, yy = np.arange(w, dtype=np.float32)[None], np.arange(h, dtype=np.float32)[:, None]
    t = (xx * np.cos(a) + yy * np.sin(a)).astype(np.float32) / (abs(w * np.cos(a)) + abs(h * np.sin(a)) + 1e-6)
    t -= t.min()
    blotch = rng.normal(0, 30, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3)).astype(np.float32)
    im = c1 + (c2 - c1) * t[..., None] + cv2.resize(blotch, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(1, 5))):  # grainy clouds: an irregular soft mask over coloured noise
        ph, pw = (rng.uniform(0.15, 0.4, 2) * (h, w)).astype(int)
        y0, x0 = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        low = np.pad(rng.uniform(0, 1, (5, 5)), 1).astype(np.float32)  # zero rim: no straight patch edges
        shape = cv2.resize(low, (pw, ph), interpolation=cv2.INTER_CUBIC)
        alpha = cv2.GaussianBlur((shape > 0.55).astype(np.float32), (0, 0), 3) * rng.uniform(0.3, 0.7)
        grain = rng.uniform(0, 255, 3).astype(np.float32) + 80 * (rng.random((ph, pw, 3), np.float32) - 0.5)
        roi = im[y0:y0 + ph, x0:x0 + pw]
        roi += (grain - roi) * alpha[..., None]
    for _ in range(int(rng.integers(3, 13))):  # thin straight lines crossing the scene
        p1, p2 = rng.uniform(0, 1, (2, 2)) * (w, h)
        cv2.line(im, tuple(int(v) for v in p1), tuple(int(v) for v in p2), rng.uniform(0, 255, 3).tolist(),
                 int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(3, 11))):  # blobs: jagged polygons no wider than max_clutter pixels
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.3, 1.0, n) * rng.uniform(0.3, 1.0) * max_clutter / 2
        c = rng.uniform(0, 1, 2) * (w, h)
        pts = np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)], 1)
        cv2.fillPoly(im, [np.round(pts).astype(np.int32)], rng.uniform(0, 255, 3).tolist(), cv2.LINE_AA)
    return im


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray, under_owner: np.ndarray) -> np.ndarray:
    """A random colour (best of a few draws) that stands out from the background it covers and from every object
    it overlaps, each compared by its mean colour, so touching objects never merge into one blob."""
    refs = np.stack([under[under_owner == v].mean(0) for v in np.unique(under_owner)])
    cands = rng.uniform(0, 255, (8, 3))
    dist = np.linalg.norm(cands[:, None] - refs[None], axis=2).min(1)
    ok = np.nonzero(dist > 90)[0]  # 90 of a possible 441 (RGB diagonal): clearly different at a glance
    return cands[ok[0]] if len(ok) else cands[dist.argmax()]


def _box_iou(b: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes`."""
    iw = (np.minimum(b[2], boxes[:, 2]) - np.maximum(b[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(b[3], boxes[:, 3]) - np.maximum(b[1], boxes[:, 1])).clip(0)
    inter = iw * ih
    union = (b[2] - b[0]) * (b[3] - b[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / union


def draw_sample(rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> Sample:
    """Draw one image with its objects. Placements that would hide more than cfg.max_hidden of an earlier object,
    or overlap its box by more than cfg.max_iou (NMS would merge them), are retried, then given up."""
    h, w = (int(v) for v in rng.integers(cfg.img_size[0], cfg.img_size[1] + 1, 2))
    side = min(h, w)
    im = _background(rng, h, w, max_clutter=0.6 * cfg.object_size[0] * side)
    owner = np.full((h, w), -1, np.int16)
    classes, full_boxes, areas, visible = [], [], [], []  # areas: whole shapes; visible: what is still seen
    log_size = np.log(cfg.object_size)
    for _ in range(int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))):
        c = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(rng, CLASSES[c], float(np.exp(rng.uniform(*log_size))) * side)
        mh, mw = mask.shape
        for _try in range(20):
            y0, x0 = int(rng.integers(0, h - mh + 1)), int(rng.integers(0, w - mw + 1))
            box = np.array([x0, y0, x0 + mw, y0 + mh], float)
            if full_boxes and _box_iou(box, np.array(full_boxes)).max() > cfg.max_iou:
                continue
            covered = np.bincount(owner[y0:y0 + mh, x0:x0 + mw][mask] + 1, minlength=len(classes) + 1)[1:]
            if len(classes) and (np.array(visible) - covered < (1 - cfg.max_hidden) * np.array(areas)).any():
                continue
            visible = [v - int(x) for v, x in zip(visible, covered)] + [int(mask.sum())]
            k = len(classes)
            roi = im[y0:y0 + mh, x0:x0 + mw]
            colour = _contrasting_colour(rng, roi[mask], owner[y0:y0 + mh, x0:x0 + mw][mask])
            g = np.linspace(-1, 1, mw, dtype=np.float32)[None, :] * rng.uniform(-25, 25)  # gentle shading
            shaded = colour[None, None, :] + g[..., None] + np.zeros((mh, 1, 1), np.float32)
            roi[mask] = shaded[mask]
            owner[y0:y0 + mh, x0:x0 + mw][mask] = k
            classes.append(c)
            full_boxes.append(box)
            areas.append(visible[-1])
            break
    # sensor noise over everything (uniform: several times cheaper to draw than Gaussian, looks the same)
    im += rng.uniform(6, 28) * (rng.random(im.shape, np.float32) - 0.5)
    boxes = np.zeros((len(classes), 4), int)
    for k, (x0, y0, x1, y1) in enumerate(np.array(full_boxes, int)):  # what is left visible lies inside
        ys, xs = np.nonzero(owner[y0:y1, x0:x1] == k)
        boxes[k] = x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1
    return Sample(np.clip(im, 0, 255).astype(np.uint8), np.array(classes, int), boxes, owner)


def _write_one(args: tuple[Path, SynthConfig, int, str, int]) -> None:
    root, cfg, split_id, split, i = args
    s = draw_sample(np.random.default_rng([cfg.seed, split_id, i]), cfg)
    ok, buf = cv2.imencode(".jpg", s.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "JPEG encoding failed"
    (root / "images" / split / f"{i:05d}.jpg").write_bytes(buf.tobytes())
    (root / "labels" / split / f"{i:05d}.txt").write_text("".join(x + "\n" for x in s.yolo_lines()))


def _marker_text(cfg: SynthConfig) -> str:
    return json.dumps({"version": VERSION, "classes": list(CLASSES), **asdict(cfg)}, sort_keys=True)


def is_generated(root: Path, cfg: SynthConfig) -> bool:
    """True when root holds a finished dataset generated with exactly these settings."""
    m = Path(root) / MARKER
    return m.is_file() and m.read_text() == _marker_text(cfg)


def _replaceable(root: Path) -> bool:
    """Only a folder that we generated (marker, or just our images/labels layout) is ever deleted and replaced."""
    entries = {p.name for p in root.iterdir()}
    return MARKER in entries or entries <= {"images", "labels"}


def generate_dataset(root: str | Path, cfg: SynthConfig = SynthConfig(), workers: int | None = None) -> None:
    """Write root/images/{train,val}/*.jpg and root/labels/{train,val}/*.txt, replacing an older generated copy."""
    root = Path(root).resolve()
    if root.exists() and not _replaceable(root):
        raise UserError(f"{root} exists and was not generated by this repo (no {MARKER}); "
                        "move it away or point the data yaml's 'path' elsewhere")
    n = cfg.train + cfg.val
    LOGGER.info(f"Generating synthetic dataset ({n} images) in {root} ...")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        jobs = []
        for split_id, (split, count) in enumerate((("train", cfg.train), ("val", cfg.val))):
            for sub in ("images", "labels"):
                (tmp / sub / split).mkdir(parents=True)
            jobs += [(tmp, cfg, split_id, split, i) for i in range(count)]
        # OpenCV and NumPy release the GIL for most of the drawing and encoding, so threads do run in parallel
        with ThreadPool(workers or min(4, os.cpu_count() or 1)) as pool:
            for _ in tqdm(pool.imap_unordered(_write_one, jobs, chunksize=8), total=n, desc="synthetic"):
                pass
        (tmp / MARKER).write_text(_marker_text(cfg))
        if is_generated(root, cfg):  # another process finished first: keep its copy
            return
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
            shutil.rmtree(old)
        try:
            os.replace(tmp, root)
        except OSError:  # a concurrent run (e.g. another DDP rank) put its copy there in the meantime
            if not is_generated(root, cfg):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_generated(root: str | Path, section: dict | None, names: dict[int, str], source: str) -> None:
    """check_dataset's hook: generate the dataset unless a finished copy with these settings is already there."""
    cfg = SynthConfig.from_dict(section, f"{source}: generate")
    if len(names) != len(CLASSES):
        raise UserError(f"{source}: the synthetic generator draws {len(CLASSES)} classes {list(CLASSES)}, "
                        f"but {len(names)} names are given")
    if not is_generated(Path(root), cfg):
        generate_dataset(root, cfg)
