"""YOLOv5's training loss: CIoU box regression, objectness and class BCE over anchor-matched grid cells."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from utils.torch_utils import de_parallel

# Cell offsets (x, y) tried around each target centre: itself, left, up, right, down (scaled by the 0.5 bias below).
_NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
_CELL_BIAS = 0.5  # a neighbour is used when the centre lies within half a cell of the shared border


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, GIoU: bool = False, DIoU: bool = False,
             CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise IoU (or GIoU / DIoU / CIoU) of broadcastable (..., 4) boxes; returns shape (...)."""
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
        b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        (b1x1, b1y1, b1x2, b1y2), (b2x1, b2y1, b2x2, b2y2) = box1.unbind(-1), box2.unbind(-1)
        w1, h1, w2, h2 = b1x2 - b1x1, b1y2 - b1y1, b2x2 - b2x1, b2y2 - b2y1
    h1, h2 = h1 + eps, h2 + eps  # keeps the aspect-ratio term finite for degenerate boxes
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * \
            (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # smallest enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    if GIoU and not (DIoU or CIoU):
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps  # squared diagonal of the enclosing box
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4  # squared centre distance
    if not CIoU:
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():  # alpha is a weight, not a path for gradients (as in the CIoU paper)
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:
    """Label-smoothed (positive, negative) BCE targets."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss around a BCEWithLogitsLoss: down-weights easy examples by (1 - p_t) ** gamma."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the focal factor must be applied per element, before reducing

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        prob = pred.sigmoid()
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


class ComputeLoss:
    """YOLOv5 loss for a model whose last layer is Detect and which carries a `hyp` dict (or is given one)."""

    sort_obj_iou = False  # True: where targets share a cell, the highest IoU is written last and wins

    def __init__(self, model: nn.Module, autobalance: bool = False, hyp: dict | None = None):
        bare = de_parallel(model)
        h = hyp if hyp is not None else model.hyp if hasattr(model, "hyp") else bare.hyp
        device = next(bare.parameters()).device
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["cls_pw"]], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h["obj_pw"]], device=device))
        self.cp, self.cn = smooth_BCE(h.get("label_smoothing", 0.0))
        if h["fl_gamma"] > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, h["fl_gamma"]), FocalLoss(bce_obj, h["fl_gamma"])
        self.BCEcls, self.BCEobj = bce_cls, bce_obj

        m = bare.model[-1]  # Detect
        self.na, self.nc, self.nl = m.na, m.nc, m.nl
        self.anchors = m.anchors  # (nl, na, 2) in grid units of each level
        # Small-object levels see many more cells, so their objectness loss is weighted up.
        self.balance = {3: [4.0, 1.0, 0.4]}.get(m.nl, [4.0, 1.0, 0.25, 0.06, 0.02])
        self.ssi = list(m.stride).index(16) if autobalance else 0
        self.autobalance = autobalance
        self.gr = 1.0  # objectness target: gr * IoU + (1 - gr)
        self.hyp = h

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Total loss times batch size, and the detached [box, obj, cls] parts."""
        device = targets.device
        lbox, lobj, lcls = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(p, targets)
        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5  # centre may sit up to half a cell outside its cell
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]  # at most 4x the anchor
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox[i], CIoU=True)
                lbox = lbox + (1.0 - iou).mean()
                iou = iou.detach().clamp(0).type(tobj.dtype)
                if self.sort_obj_iou:
                    order = iou.argsort()
                    b, a, gj, gi, iou = b[order], a[order], gj[order], gi[order], iou[order]
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou
                if self.nc > 1:  # a single class is fully described by objectness
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls = lcls + self.BCEcls(pcls, t)
            obji = self.BCEobj(pi[..., 4], tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, p: list[torch.Tensor], targets: torch.Tensor):
        """Assign targets (n, 6: image, class, cx, cy, w, h normalised) to anchors and grid cells of every level.

        Returns per level: classes, box targets (centre offset from the cell corner, wh; grid units),
        indices (image, anchor, gy, gx) and the matched anchors' wh (grid units).
        """
        device = targets.device
        nt = targets.shape[0]
        tcls, tbox, indices, anch = [], [], [], []
        ai = torch.arange(self.na, device=device, dtype=targets.dtype).view(self.na, 1).repeat(1, nt)
        t_all = torch.cat((targets.repeat(self.na, 1, 1), ai[..., None]), 2)  # (na, nt, 7), last column anchor
        offsets = _NEIGHBOURS.to(device=device, dtype=targets.dtype) * _CELL_BIAS
        for i in range(self.nl):
            anchors = self.anchors[i].to(targets.dtype)
            ny, nx = p[i].shape[2:4]
            gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=targets.dtype)
            t, off = self._match(t_all * gain, anchors, gain[2:4], offsets)
            b, c = t[:, :2].long().T
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - off).long()
            gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch

    def _match(self, t: torch.Tensor, anchors: torch.Tensor, grid_wh: torch.Tensor, offsets: torch.Tensor):
        """Keep (target, anchor) pairs within anchor_t in wh ratio, then add up to two neighbouring cells each.

        t is (na, nt, 7) in grid units; returns the selected rows (m, 7) and each row's cell offset (m, 2).
        """
        if t.shape[1] == 0:
            return t[0], torch.zeros(0, 2, device=t.device, dtype=t.dtype)
        r = t[..., 4:6] / anchors[:, None]
        t = t[torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]]
        gxy = t[:, 2:4]
        gxi = grid_wh - gxy  # distance from the far border: the same test then finds right / lower neighbours
        left, up = ((gxy % 1 < _CELL_BIAS) & (gxy > 1)).T
        right, down = ((gxi % 1 < _CELL_BIAS) & (gxi > 1)).T
        use = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, m)
        off = (torch.zeros_like(gxy)[None] + offsets[:, None])[use]
        return t.repeat((5, 1, 1))[use], off
