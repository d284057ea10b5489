"""Training augmentations: every box stays on its object, checked through the pixels of painted scenes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import COLOURS, assert_boxes_on_objects
from utils.augmentations import augment_hsv, box_candidates, flip_labels, letterbox, mixup, mosaic4, random_perspective
from utils.boxes import xywhn2xyxy, xyxy2xywhn


def paint_scene(rng: np.random.Generator, size: int = 160, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n solid rectangles of distinct colours, one per cell of a 2x2 grid over the central half of a black image
    (so that every single transform keeps them inside); returns the image and (n, 5) cls + pixel xyxy."""
    im = np.zeros((size, size, 3), np.uint8)
    cell = size // 4
    targets = []
    for k, cls in enumerate(rng.permutation(len(COLOURS))[:n]):
        x0, y0 = size // 4 + (k % 2) * cell, size // 4 + (k // 2) * cell
        w, h = rng.integers(cell // 2, cell - 4, 2)
        x1, y1 = x0 + int(rng.integers(0, cell - w - 2)), y0 + int(rng.integers(0, cell - h - 2))
        im[y1:y1 + h, x1:x1 + w] = COLOURS[cls]
        targets.append([cls, x1, y1, x1 + w, y1 + h])
    return im, np.array(targets, np.float64)


GEOMETRY_OFF = {"degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0}


@pytest.mark.parametrize("params,min_fill,tol", [
    ({"translate": 0.1}, 0.9, 1.5),
    ({"scale": 0.5}, 0.9, 1.5),
    ({"degrees": 30.0}, 0.4, 3.0),  # a rotated rectangle fills about half of its axis-aligned box
    ({"shear": 10.0}, 0.6, 3.0),
    ({"perspective": 0.0005}, 0.7, 3.0),
])
@pytest.mark.parametrize("seed", range(5))
def test_random_perspective_keeps_every_box_on_its_object(params, min_fill, tol, seed):
    rng = np.random.default_rng(seed)
    im, targets = paint_scene(rng)
    out, boxes = random_perspective(im, targets, rng, **{**GEOMETRY_OFF, **params})
    assert out.shape == im.shape and not np.array_equal(out, im)
    assert sorted(boxes[:, 0]) == sorted(targets[:, 0])  # central objects stay inside: none is dropped
    assert_boxes_on_objects(out, boxes, min_fill, tol)


def test_random_perspective_crop_drops_boxes_mostly_cut_off():
    im = np.zeros((128, 128, 3), np.uint8)
    targets = np.array([[0, 0, 40, 40, 80], [1, 94, 40, 128, 80], [2, 50, 50, 70, 70]], np.float64)
    for cls, x1, y1, x2, y2 in targets.astype(int):
        im[y1:y2, x1:x2] = COLOURS[cls]
    # no random geometry, border -32: the central 64x64 crop, as after a mosaic; x 32..96 survives
    out, boxes = random_perspective(im, targets, np.random.default_rng(0), **GEOMETRY_OFF, border=(-32, -32))
    assert out.shape == (64, 64, 3)
    # class 0 keeps 8 of 40 px width (20% of its area > 10%); class 1 keeps 2 px (too thin); class 2 is whole
    assert boxes[:, 0].tolist() == [0, 2]
    assert np.allclose(boxes[:, 1:], [[0, 8, 8, 48], [18, 18, 38, 38]])
    assert_boxes_on_objects(out, boxes, strict=False)


def test_box_candidates_rules():
    before = np.array([[0, 0, 10, 10]] * 4, float).T
    after = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 3, 3], [0, 0, 10, 0.4]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, False]  # thin, <10% area, w/h>20
    assert box_candidates(np.array([[0, 0, 100, 4]], float).T, np.array([[0, 0, 100, 4.0]]).T).tolist() == [False]


@pytest.mark.parametrize("seed", range(5))
def test_mosaic4_places_four_images_and_their_boxes(seed):
    rng = np.random.default_rng(seed)
    s = 128
    ims, labels = [], []
    for hw in [(96, 128), (128, 80), (128, 128), (64, 128)]:
        im, t = paint_scene(rng, 160)
        ims.append(cv2.resize(im, hw[::-1], interpolation=cv2.INTER_NEAREST))
        labels.append(np.c_[t[:, 0], xyxy2xywhn(t[:, 1:], 160, 160)])
    centre = rng.uniform(0.5 * s, 1.5 * s, 2)
    canvas, boxes = mosaic4(ims, labels, s, centre)
    assert canvas.shape == (2 * s, 2 * s, 3) and len(boxes) == sum(len(x) for x in labels)
    xc, yc = int(centre[0]), int(centre[1])
    for k, im in enumerate(ims):  # each image touches the centre with its inner corner
        h, w = im.shape[:2]
        x1, y1 = (xc - w if k in (0, 2) else xc), (yc - h if k in (0, 1) else yc)
        cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y1 + h, 2 * s), min(x1 + w, 2 * s)
        assert np.array_equal(canvas[cy1:cy2, cx1:cx2], im[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1])
    assert (boxes[:, 1:] >= 0).all() and (boxes[:, 1:] <= 2 * s).all()
    visible = boxes[(boxes[:, 3] - boxes[:, 1] > 3) & (boxes[:, 4] - boxes[:, 2] > 3)]
    assert_boxes_on_objects(canvas, visible, strict=False)


@pytest.mark.parametrize("ud,lr", [(True, False), (False, True), (True, True)])
def test_flips_move_boxes_with_the_image(ud, lr):
    im, t = paint_scene(np.random.default_rng(1), 160)
    im = im[:, 20:]  # not square, not symmetric
    t[:, [1, 3]] -= 20
    labels = np.c_[t[:, 0], xyxy2xywhn(t[:, 1:], im.shape[1], im.shape[0])]
    flip_labels(labels, ud, lr)
    out = np.flipud(im) if ud else im
    out = np.fliplr(out) if lr else out
    boxes = np.c_[labels[:, 0], xywhn2xyxy(labels[:, 1:], out.shape[1], out.shape[0])]
    assert_boxes_on_objects(np.ascontiguousarray(out), boxes, tol=0.01)


def test_letterbox_keeps_boxes_on_objects():
    im, t = paint_scene(np.random.default_rng(2), 160)
    im, t[:, [2, 4]] = im[30:130], t[:, [2, 4]] - 30  # 160 wide, 100 high
    out, (r, _), (pw, ph) = letterbox(im, 128, auto=False)
    assert out.shape == (128, 128, 3) and (out[:int(ph)] == 114).all()
    boxes = t.copy()
    boxes[:, [1, 3]] = t[:, [1, 3]] * r + pw
    boxes[:, [2, 4]] = t[:, [2, 4]] * r + ph
    assert_boxes_on_objects(out, boxes, tol=1.5)


def test_hsv_jitter_in_place_within_gains_and_repeatable():
    im, _ = paint_scene(np.random.default_rng(3), 160)
    im[im == 0] = 90  # a grey background to jitter too
    ref = im.copy()
    augment_hsv(im, np.random.default_rng(0), 0.0, 0.0, 0.0)
    assert np.array_equal(im, ref)  # all gains 0: untouched
    changed = [ref.copy() for _ in range(3)]
    for a, seed in zip(changed, (5, 5, 6)):
        augment_hsv(a, np.random.default_rng(seed), 0.0, 0.0, 0.4)  # in place: the same array changes
    assert np.array_equal(changed[0], changed[1]) and not np.array_equal(changed[0], changed[2])
    v0 = cv2.cvtColor(ref, cv2.COLOR_BGR2HSV).astype(float)
    v1 = cv2.cvtColor(changed[0], cv2.COLOR_BGR2HSV).astype(float)
    ratio = v1[..., 2][v0[..., 2] > 50] / v0[..., 2][v0[..., 2] > 50]
    assert 0.6 - 0.02 <= ratio.min() and ratio.max() <= 1.4 + 0.02 and ratio.std() < 0.05  # one value gain
    assert np.abs(v1[..., 0] - v0[..., 0]).max() <= 1  # hue kept (rounding only) when only V jitters
    hue = ref.copy()
    augment_hsv(hue, np.random.default_rng(4), 0.5, 0.0, 0.0)  # gain 1.44: hues wrap
    gain = np.random.default_rng(4).uniform(-1, 1, 3)[0] * 0.5 + 1  # the draw augment_hsv makes
    h0, h1 = v0[..., 0][v0[..., 1] > 100], cv2.cvtColor(hue, cv2.COLOR_BGR2HSV)[..., 0][v0[..., 1] > 100]
    d = np.abs(h1 - (h0 * gain) % 180)
    assert np.minimum(d, 180 - d).max() <= 2  # OpenCV's 8-bit hue is 0-179 and wraps around


def test_mixup_blends_two_images_and_keeps_both_label_sets():
    a, b = np.full((8, 8, 3), 200, np.uint8), np.zeros((8, 8, 3), np.uint8)
    la, lb = np.array([[0, 1, 1, 3, 3.0]]), np.array([[1, 4, 4, 6, 6.0], [2, 0, 0, 2, 2.0]])
    out, labels = mixup(a, la, b, lb, np.random.default_rng(0))
    assert 70 < out.mean() < 130 and len(np.unique(out)) == 1  # Beta(32, 32) stays near an even blend
    assert labels[:, 0].tolist() == [0, 1, 2]
