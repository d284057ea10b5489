"""YOLOv5 loss: IoU variants, the anchor/cell matcher and the loss value against hand-computed answers."""

import math

import pytest
import torch
import torch.nn as nn

from models.yolo import Detect, DetectionModel
from utils.loss import ComputeLoss, FocalLoss, bbox_iou, smooth_BCE

ANCHORS_PX = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]  # yolov5n
STRIDES = [8, 16, 32]
HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0)
IMG = 640  # grids 80, 40, 20


class TinyDetector(nn.Module):
    """Just enough of a DetectionModel for ComputeLoss: `.model[-1]` is a Detect with yolov5n's anchors."""

    def __init__(self, nc: int, **hyp):
        super().__init__()
        det = Detect(nc, ANCHORS_PX, ch=(4, 4, 4))
        det.stride = torch.tensor(STRIDES, dtype=torch.float32)
        det.anchors /= det.stride.view(-1, 1, 1)  # grid units, as DetectionModel leaves them
        self.model = nn.ModuleList([det])
        self.hyp = {**HYP, **hyp}


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def bce(logit: float, target: float) -> float:
    return -(target * math.log(sig(logit)) + (1 - target) * math.log(1 - sig(logit)))


def target_at(grid_x: float, grid_y: float, w_px: float, h_px: float, img: int = 0, cls: int = 1, stride: int = 8):
    """One normalised target row whose centre lies at (grid_x, grid_y) on the level with this stride."""
    return torch.tensor([[img, cls, grid_x * stride / IMG, grid_y * stride / IMG, w_px / IMG, h_px / IMG]])


def empty_preds(bs: int, nc: int) -> list[torch.Tensor]:
    return [torch.zeros(bs, 3, IMG // s, IMG // s, 5 + nc) for s in STRIDES]


# ---------------------------------------------------------------- bbox_iou
def test_iou_of_two_2x2_boxes_overlapping_by_1x2():
    a, b = torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 0, 3, 2])
    assert bbox_iou(a, b, xywh=False).item() == pytest.approx(2 / 6, abs=1e-6)  # 2 / (4 + 4 - 2)
    # the same boxes as centre-size
    assert bbox_iou(torch.tensor([1.0, 1, 2, 2]), torch.tensor([2.0, 1, 2, 2])).item() == pytest.approx(1 / 3, abs=1e-6)


def test_giou_diou_ciou_on_diagonal_overlap():
    a, b = torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 1, 3, 3])
    iou = 1 / 7  # intersection 1x1, union 4 + 4 - 1
    giou = iou - (9 - 7) / 9  # enclosing box 3x3
    diou = iou - 2 / 18  # centres (1,1) and (2,2): rho^2 = 2; enclosing diagonal^2 = 3^2 + 3^2
    assert bbox_iou(a, b, xywh=False, GIoU=True).item() == pytest.approx(giou, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, DIoU=True).item() == pytest.approx(diou, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, CIoU=True).item() == pytest.approx(diou, abs=1e-6)  # same aspect: v = 0


def test_ciou_aspect_term_for_concentric_boxes():
    a, b = torch.tensor([0.0, 0, 2, 2]), torch.tensor([0.0, 0, 4, 2])  # xywh, same centre
    iou = 4 / 8  # 2x2 inside 4x2
    v = 4 / math.pi ** 2 * (math.atan(4 / 2) - math.atan(2 / 2)) ** 2
    alpha = v / (v - iou + 1)
    assert bbox_iou(a, b, CIoU=True).item() == pytest.approx(iou - v * alpha, abs=1e-6)  # rho = 0


def test_bbox_iou_broadcasts():
    a = torch.tensor([[0.0, 0, 2, 2], [0.0, 0, 4, 4]])[:, None]  # (2, 1, 4)
    b = torch.tensor([[0.0, 0, 2, 2], [1.0, 0, 3, 2], [10.0, 10, 11, 11]])  # (3, 4)
    iou = bbox_iou(a, b, xywh=False)
    assert iou.shape == (2, 3)
    assert torch.allclose(iou, torch.tensor([[1.0, 1 / 3, 0.0], [0.25, 0.25, 0.0]]), atol=1e-6)


def test_smooth_bce_and_focal_loss():
    assert smooth_BCE(0.2) == pytest.approx((0.9, 0.1))
    assert smooth_BCE(0.0) == (1.0, 0.0)
    pred, true = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    focal = FocalLoss(nn.BCEWithLogitsLoss(), gamma=2.0, alpha=0.25)(pred, true)
    # p_t = sigmoid(2) for the positive, 1 - sigmoid(-1) for the negative; alpha 0.25 / 0.75
    expected = (0.25 * (1 - sig(2)) ** 2 * bce(2, 1) + 0.75 * sig(-1) ** 2 * bce(-1, 0)) / 2
    assert focal.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- matcher
def matches(loss: ComputeLoss, targets: torch.Tensor, bs: int = 1) -> set:
    tcls, tbox, indices, anch = loss.build_targets(empty_preds(bs, loss.nc), targets)
    out = set()
    for level, ((b, a, gj, gi), tb) in enumerate(zip(indices, tbox)):
        for k in range(b.shape[0]):
            dx, dy, w, h = (round(v, 4) for v in tb[k].tolist())
            out.add((level, int(b[k]), int(a[k]), int(gi[k]), int(gj[k]), dx, dy, w, h))
    return out


def test_matcher_levels_anchors_cells_and_offsets():
    loss = ComputeLoss(TinyDetector(nc=2))
    # 8x8 px = 1x1 cell on P3. P3 anchors in cells: (1.25, 1.625) ratio 1.625 ok, (2, 3.75) ratio 3.75 ok,
    # (4.125, 2.875) ratio 4.125 > 4 no. P4/P5 anchors are >= 7x the target (in their own cells): no match.
    got = matches(loss, target_at(10.3, 5.8, 8, 8, img=1), bs=2)
    # centre cell (10, 5); x frac 0.3 < 0.5 -> left neighbour (9, 5); y frac 0.8 > 0.5 -> lower neighbour (10, 6)
    cells = {(10, 5, 0.3, 0.8), (9, 5, 1.3, 0.8), (10, 6, 0.3, -0.2)}
    expected = {(0, 1, a, gx, gy, dx, dy, 1.0, 1.0) for a in (0, 1) for gx, gy, dx, dy in cells}
    assert got == expected


def test_matcher_large_target_goes_to_p5_only():
    loss = ComputeLoss(TinyDetector(nc=2))
    # 300x250 px vs P4's largest-ratio-fitting anchor (59, 119): 300/59 = 5.08 > 4; vs (62, 45): 5.6 > 4.
    # vs P5 (116, 90): 2.59, 2.78; (156, 198): 1.92, 1.26; (373, 326): 1.24, 1.30 -> all three P5 anchors.
    got = matches(loss, target_at(7.6, 3.2, 300, 250, stride=32))
    assert {(m[0], m[2]) for m in got} == {(2, 0), (2, 1), (2, 2)}
    # x frac 0.6 -> right neighbour (8, 3); y frac 0.2 -> upper neighbour (7, 2)
    assert {(m[3], m[4], m[5], m[6]) for m in got} == {(7, 3, 0.6, 0.2), (8, 3, -0.4, 0.2), (7, 2, 0.6, 1.2)}


def test_matcher_adds_no_neighbours_outside_the_grid():
    loss = ComputeLoss(TinyDetector(nc=2))
    # x = 0.3: left neighbour would be off-grid (gxy > 1 fails); right needs x frac > 0.5.
    # y = 79.6 on an 80-cell grid: lower neighbour would be off-grid (80 - 79.6 = 0.4 < 1); upper needs y frac < 0.5.
    got = matches(loss, target_at(0.3, 79.6, 8, 8))
    assert {(m[3], m[4]) for m in got} == {(0, 79)}
    assert {m[2] for m in got} == {0, 1}


def test_no_targets():
    loss = ComputeLoss(TinyDetector(nc=2))
    tcls, tbox, indices, anch = loss.build_targets(empty_preds(1, 2), torch.zeros(0, 6))
    assert all(t.shape[0] == 0 for t in tcls) and all(t.shape == (0, 4) for t in tbox)


# ---------------------------------------------------------------- loss value
XY, WH, OBJ, CLS = 0.2, -0.1, 0.7, (0.3, -0.2)  # raw logits written into every prediction


def hand_set_preds(bs: int, nc: int) -> list[torch.Tensor]:
    p = empty_preds(bs, nc)
    for pi in p:
        pi[..., 0:2], pi[..., 2:4], pi[..., 4] = XY, WH, OBJ
        pi[..., 5:] = torch.tensor(CLS[:nc])
    return p


def ciou_by_hand(px, py, pw, ph, tx, ty, tw, th) -> float:
    iw = max(0.0, min(px + pw / 2, tx + tw / 2) - max(px - pw / 2, tx - tw / 2))
    ih = max(0.0, min(py + ph / 2, ty + th / 2) - max(py - ph / 2, ty - th / 2))
    inter = iw * ih
    iou = inter / (pw * ph + tw * th - inter)
    cw = max(px + pw / 2, tx + tw / 2) - min(px - pw / 2, tx - tw / 2)
    ch = max(py + ph / 2, ty + th / 2) - min(py - ph / 2, ty - th / 2)
    rho2 = (px - tx) ** 2 + (py - ty) ** 2
    v = 4 / math.pi ** 2 * (math.atan(tw / th) - math.atan(pw / ph)) ** 2
    alpha = v / (v - iou + 1)
    return iou - (rho2 / (cw ** 2 + ch ** 2) + alpha * v)


def expected_parts(smoothing: float = 0.0) -> tuple[float, float, float]:
    """The target of test_matcher_levels_anchors_cells_and_offsets (image 1 of 2) under hand_set_preds."""
    anchors = [(10 / 8, 13 / 8), (16 / 8, 30 / 8)]  # the two matched P3 anchors, in cells
    offsets = [(0.3, 0.8), (1.3, 0.8), (0.3, -0.2)]  # centre, left, lower cell
    pxy = 2 * sig(XY) - 0.5
    cious = [ciou_by_hand(pxy, pxy, (2 * sig(WH)) ** 2 * aw, (2 * sig(WH)) ** 2 * ah, ox, oy, 1.0, 1.0)
             for aw, ah in anchors for ox, oy in offsets]
    lbox = HYP["box"] * sum(1 - c for c in cious) / len(cious)
    # objectness: mean BCE over all cells of each level; matched cells target their CIoU (clamped at 0)
    n0 = 2 * 3 * 80 * 80
    level0 = (n0 * bce(OBJ, 0) + sum(bce(OBJ, max(c, 0)) - bce(OBJ, 0) for c in cious)) / n0
    lobj = HYP["obj"] * (4.0 * level0 + 1.0 * bce(OBJ, 0) + 0.4 * bce(OBJ, 0))
    cp, cn = 1 - smoothing / 2, smoothing / 2  # class 1 is the target's class
    lcls = HYP["cls"] * (bce(CLS[0], cn) + bce(CLS[1], cp)) / 2  # the same for every matched cell
    return lbox, lobj, lcls


def test_loss_equals_hand_computation():
    loss = ComputeLoss(TinyDetector(nc=2))
    total, parts = loss(hand_set_preds(2, 2), target_at(10.3, 5.8, 8, 8, img=1))
    lbox, lobj, lcls = expected_parts()
    assert parts.tolist() == pytest.approx([lbox, lobj, lcls], abs=1e-5)
    assert total.item() == pytest.approx(2 * (lbox + lobj + lcls), abs=1e-5)  # times batch size


def test_label_smoothing_changes_class_targets():
    loss = ComputeLoss(TinyDetector(nc=2, label_smoothing=0.2))
    assert (loss.cp, loss.cn) == pytest.approx((0.9, 0.1))
    _, parts = loss(hand_set_preds(2, 2), target_at(10.3, 5.8, 8, 8, img=1))
    assert parts[2].item() == pytest.approx(expected_parts(0.2)[2], abs=1e-6)
    assert parts[2].item() != pytest.approx(expected_parts(0.0)[2], abs=1e-4)


def test_single_class_has_no_class_loss():
    loss = ComputeLoss(TinyDetector(nc=1))
    _, parts = loss(hand_set_preds(2, 1), target_at(10.3, 5.8, 8, 8, img=1, cls=0))
    assert parts[2].item() == 0.0 and parts[0].item() > 0


def test_autobalance_with_no_targets():
    loss = ComputeLoss(TinyDetector(nc=2), autobalance=True)
    assert loss.ssi == 1  # the stride-16 level
    total, parts = loss(empty_preds(1, 2), torch.zeros(0, 6))
    ln2 = math.log(2)  # BCE of logit 0 against target 0, on every level
    assert parts.tolist() == pytest.approx([0.0, (4.0 + 1.0 + 0.4) * ln2, 0.0], abs=1e-6)
    norm = 0.9999 + 1e-4 / ln2
    assert loss.balance == pytest.approx([(4 * 0.9999 + 1e-4 / ln2) / norm, 1.0, (0.4 * 0.9999 + 1e-4 / ln2) / norm])


def test_focal_loss_used_when_fl_gamma_positive():
    loss = ComputeLoss(TinyDetector(nc=2, fl_gamma=1.5))
    assert isinstance(loss.BCEcls, FocalLoss) and isinstance(loss.BCEobj, FocalLoss)


# ---------------------------------------------------------------- training signal
def test_loss_backpropagates_and_sgd_decreases_it(one_thread):
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=2)
    model.hyp = dict(HYP)
    loss_fn = ComputeLoss(model)
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.2, 0.3], [1, 1, 0.6, 0.5, 0.5, 0.4], [1, 0, 0.2, 0.8, 0.1, 0.1]])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for step in range(6):
        loss, _ = loss_fn(model(imgs), targets)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grad = model.model[-1].m[0].weight.grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
