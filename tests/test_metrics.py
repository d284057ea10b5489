"""Detection metrics: hand cases, and agreement of our mAP with pycocotools' COCOeval."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, match_predictions

IOUV = torch.linspace(0.5, 0.95, 10)
IMG_SIZE = 2000  # ground truth lives in [0, 1000); background detections in [1000, 2000)


def _t(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float32)).reshape(-1, np.shape(x)[-1] if np.size(x) else 6)


# ---------------------------------------------------------------- match_predictions
def test_match_duplicate_detection_counts_once():
    labels = _t([[0, 0, 0, 10, 10]])
    dets = _t([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])
    correct = match_predictions(dets, labels, IOUV)
    assert isinstance(correct, torch.Tensor) and correct.dtype == torch.bool
    assert correct[0].all() and not correct[1].any()


def test_match_wrong_class_is_never_correct():
    correct = match_predictions(_t([[0, 0, 10, 10, 0.9, 1]]), _t([[0, 0, 0, 10, 10]]), IOUV)
    assert not correct.any()


def test_match_iou_between_thresholds():
    # IoU 72/100 = 0.72: correct at 0.50 ... 0.70, not at 0.75 ... 0.95; numpy in gives numpy out
    correct = match_predictions(np.array([[0, 0, 10, 10, 0.9, 0.0]]), np.array([[0, 0, 0, 10, 7.2]]), IOUV.numpy())
    assert isinstance(correct, np.ndarray)
    assert correct[0].tolist() == [True] * 5 + [False] * 5


def test_match_label_goes_to_first_detection_among_candidates():
    # both detections' best label is the same one; at low thresholds the first (most confident after NMS) wins,
    # above its IoU of 0.6 only the second qualifies
    labels = _t([[0, 0, 0, 10, 10]])
    dets = _t([[0, 0, 10, 6, 0.9, 0], [0, 0, 10, 9, 0.8, 0]])  # IoU 0.6 and 0.9
    correct = match_predictions(dets, labels, IOUV)
    assert correct[0].tolist() == [True] * 3 + [False] * 7
    assert correct[1].tolist() == [False] * 3 + [True] * 6 + [False]


def test_match_empty_inputs():
    assert match_predictions(torch.zeros((0, 6)), _t([[0, 0, 0, 10, 10]]), IOUV).shape == (0, 10)
    assert not match_predictions(_t([[0, 0, 10, 10, 0.9, 0]]), torch.zeros((0, 5)), IOUV).any()


# ---------------------------------------------------------------- AP
def test_compute_ap_known_curves():
    assert compute_ap(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(1.0)
    # recall 0.5 at precision 1: recall points 0, 0.01, ..., 0.50 score 1, the 50 beyond the last recall score 0
    assert compute_ap(np.array([0.5]), np.array([1.0]))[0] == pytest.approx(51 / 101)
    assert compute_ap(np.array([]), np.array([]))[0] == 0.0


def test_ap_per_class_hand_case():
    # class 0: 2 targets, predictions TP (0.9), FP (0.8), TP (0.7): recall .5 .5 1, precision 1 .5 .667.
    # Envelope: 1 at recall points 0..0.50 (51 of them), 2/3 at 0.51..1 (50): (51 + 50 * 2/3) / 101 = 0.834983
    # class 1: one target and no prediction -> AP 0. class 2: predictions only -> not reported
    tp = np.array([[1] * 10, [0] * 10, [1] * 10, [0] * 10], dtype=bool)
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.95]), np.array([0, 0, 0, 2]), np.array([0, 0, 1]))
    assert res.classes.tolist() == [0, 1]
    assert res.ap[0] == pytest.approx([0.834983] * 10, abs=1e-5)
    assert res.ap[1].tolist() == [0.0] * 10
    assert res.mean_results()[2] == pytest.approx(0.834983 / 2, abs=1e-5)


def test_ap_per_class_perfect_gives_p_r_one(tmp_path):
    tp = np.ones((4, 10), dtype=bool)
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 1, 1]), np.array([0, 1, 1, 1]),
                       plot=True, save_dir=tmp_path, names={0: "cat", 1: "dog"})
    assert res.p.tolist() == pytest.approx([1, 1]) and res.r.tolist() == pytest.approx([1, 1])
    assert res.tp.tolist() == [1, 3] and res.fp.tolist() == [0, 0]
    assert res.ap50.tolist() == pytest.approx([1.0, 1.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png"]


def test_fitness_weights():
    assert fitness(np.array([[0.5, 0.5, 0.6, 0.4]])).tolist() == pytest.approx([0.42])


# ---------------------------------------------------------------- confusion matrix
def test_confusion_matrix_tp_fp_fn_cells(tmp_path):
    cm = ConfusionMatrix(nc=2)
    labels = _t([[0, 0, 0, 10, 10], [1, 50, 50, 60, 60]])
    dets = _t([
        [0, 0, 10, 10, 0.9, 0],  # TP of class 0
        [100, 100, 110, 110, 0.8, 1],  # FP of class 1
        [50, 50, 60, 60, 0.1, 1],  # below conf 0.25: ignored, so the class-1 label is a FN
    ])
    cm.process_batch(dets, labels)
    expected = np.zeros((3, 3))
    expected[0, 0] = 1  # predicted 0, true 0
    expected[1, 2] = 1  # predicted 1, true background
    expected[2, 1] = 1  # predicted background, true 1
    assert (cm.matrix == expected).all()
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [0, 1]
    cm.plot(tmp_path, names={0: "cat", 1: "dog"})
    assert (tmp_path / "confusion_matrix.png").is_file()


def test_confusion_matrix_wrong_class_and_no_detections():
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(_t([[0, 0, 10, 10, 0.9, 1]]), _t([[0, 0, 0, 10, 10]]))
    cm.process_batch(None, _t([[1, 0, 0, 10, 10]]))
    cm.process_batch(torch.zeros((0, 6)), _t([[1, 0, 0, 10, 10]]))
    assert cm.matrix[1, 0] == 1  # predicted 1 where the truth is 0
    assert cm.matrix[2, 1] == 2  # both class-1 labels missed
    assert cm.matrix.sum() == 3


# ---------------------------------------------------------------- agreement with pycocotools
def _coco_map(images, ncls):
    """(mAP50-95, mAP50) from COCOeval on [(gt (m,5) cls,xyxy, det (n,6) xyxy,conf,cls), ...]."""
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1} for c in range(ncls)]}
    dets = []
    for i, (g, d) in enumerate(images):
        gt["images"].append({"id": i + 1, "width": IMG_SIZE, "height": IMG_SIZE})
        for c, x1, y1, x2, y2 in g.tolist():
            w, h = x2 - x1, y2 - y1
            ann = {"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, **ann})  # ids must be non-zero
        for x1, y1, x2, y2, s, c in d.tolist():
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 1000]
        ev.evaluate()
        ev.accumulate()
    # what summarize() averages for AP (all areas, largest maxDets); -1 marks classes without ground truth
    precision = ev.eval["precision"][:, :, :, 0, -1]
    return precision[precision > -1].mean(), precision[0][precision[0] > -1].mean()


def _our_map(images):
    """(mAP50-95, mAP50) by val.py's pipeline: per-image matching, then AP per class over the dataset."""
    stats = []
    for g, d in images:
        d = d[d[:, 4].argsort(descending=True)]  # NMS output order
        stats.append((match_predictions(d, g, IOUV), d[:, 4], d[:, 5], g[:, 0]))
    tp, conf, pred_cls, target_cls = (torch.cat(x).numpy() for x in zip(*stats))
    _, _, map50, map50_95 = ap_per_class(tp, conf, pred_cls, target_cls).mean_results()
    return map50_95, map50


def _boxes(rng, n, hi=800.0, smin=20.0, smax=120.0):
    xy = rng.uniform(0, hi, (n, 2))
    return np.concatenate((xy, xy + rng.uniform(smin, smax, (n, 2))), 1)


def _jitter(rng, b, s):
    """Move each corner by N(0, s) times the box size: IoU with the original ~ 1 - 3s on average."""
    wh = np.tile(b[:, 2:] - b[:, :2], 2)
    return b + rng.normal(0, s, b.shape) * wh


def _image(gt_cls, gt_box, det_box, det_conf, det_cls):
    return _t(np.c_[gt_cls, gt_box]), _t(np.c_[det_box, det_conf, det_cls])


def _case_perfect(rng):
    images = []
    for _ in range(3):
        b, c = _boxes(rng, 5), rng.integers(0, 2, 5)
        images.append(_image(c, b, b, rng.uniform(0.3, 1, 5), c))
    return images, 2


def _case_shifted(rng):
    # a 100x100 box shifted by dx along x has IoU (100 - dx) / (100 + dx); IoUs chosen off the thresholds
    ious = np.array([0.47, 0.52, 0.58, 0.63, 0.68, 0.72, 0.78, 0.83, 0.87, 0.92, 0.97, 0.99])
    k = np.arange(len(ious))
    b = np.c_[150.0 * (k % 6), 300.0 * (k // 6), 150.0 * (k % 6) + 100, 300.0 * (k // 6) + 100]
    d = b + np.outer(100 * (1 - ious) / (1 + ious), [1, 0, 1, 0])
    return [_image(np.zeros(len(b)), b, d, rng.uniform(0.1, 1, len(b)), np.zeros(len(b)))], 1


def _case_duplicates(rng):
    images = []
    for _ in range(2):
        b, z = _boxes(rng, 6), np.zeros(6)
        d = np.r_[_jitter(rng, b, 0.03), _jitter(rng, b, 0.03)]
        images.append(_image(z, b, d, np.r_[rng.uniform(0.5, 1, 6), rng.uniform(0.2, 0.9, 6)], np.r_[z, z]))
    return images, 1


def _case_class_without_gt(rng):
    b, z = _boxes(rng, 6), np.zeros(6)
    d = np.r_[_jitter(rng, b, 0.05), _boxes(rng, 4)]  # the last 4 are class 1, which has no ground truth
    return [_image(z, b, d, rng.uniform(0.2, 1, 10), np.r_[z, np.ones(4)])], 2


def _case_image_without_predictions(rng):
    b, z = _boxes(rng, 5), np.zeros(5)
    seen = _image(z, b, _jitter(rng, b, 0.05), rng.uniform(0.2, 1, 5), z)
    unseen = (_t(np.c_[np.zeros(4), _boxes(rng, 4)]), torch.zeros((0, 6)))
    return [seen, unseen], 1


def _case_crowded(rng):
    n = 60  # 60 objects of 20-60 px in a 250 px square: heavy overlap
    b, c = _boxes(rng, n, hi=250, smin=20, smax=60), rng.integers(0, 2, n)
    found = rng.random(n) < 0.85
    d = np.r_[_jitter(rng, b[found], 0.08), _boxes(rng, 20, hi=250, smin=20, smax=60)]
    d_cls = np.r_[c[found], rng.integers(0, 2, 20)]
    return [_image(c, b, d, rng.uniform(0.05, 1, len(d)), d_cls)], 2


def _case_multi_class(rng):
    images = []
    for _ in range(5):
        m = int(rng.integers(3, 10))
        b, c = _boxes(rng, m), rng.integers(0, 4, m)
        found = rng.random(m) < 0.8
        confused = np.where(rng.random(m) < 0.1, rng.integers(0, 4, m), c)  # some predicted as another class
        k = int(rng.integers(0, 4))
        d = np.r_[_jitter(rng, b[found], 0.06), _boxes(rng, k)]
        images.append(_image(c, b, d, rng.uniform(0.05, 1, len(d)), np.r_[confused[found], rng.integers(0, 4, k)]))
    return images, 4


CASES = {
    "perfect": _case_perfect,
    "shifted": _case_shifted,
    "duplicates": _case_duplicates,
    "class_without_gt": _case_class_without_gt,
    "image_without_predictions": _case_image_without_predictions,
    "crowded": _case_crowded,
    "multi_class": _case_multi_class,
}


@pytest.mark.parametrize("name", list(CASES))
def test_map_agrees_with_pycocotools(name):
    images, ncls = CASES[name](np.random.default_rng(0))
    ours, coco = _our_map(images), _coco_map(images, ncls)
    assert ours[0] == pytest.approx(coco[0], abs=1e-3), f"mAP50-95 ours {ours[0]:.4f} COCO {coco[0]:.4f}"
    assert ours[1] == pytest.approx(coco[1], abs=1e-3), f"mAP50 ours {ours[1]:.4f} COCO {coco[1]:.4f}"
    assert 0.3 < coco[0] <= coco[1] <= 1  # the case is not degenerate


def test_partial_recall_earns_nothing_beyond_it():
    # 2 objects, 1 found with precision 1: 51 of COCO's 101 recall points are reached, at precision 1.
    # (Upstream YOLOv5 would report 0.75 here: it draws a line from (0.5, 1) to (1, 0) and integrates under it.)
    b = np.array([[0.0, 0, 100, 100], [300, 300, 400, 400]])
    images = [_image(np.zeros(2), b, b[:1], np.array([0.9]), np.zeros(1))]
    assert _coco_map(images, 1) == pytest.approx((51 / 101, 51 / 101))
    assert _our_map(images) == pytest.approx((51 / 101, 51 / 101))
