"""YOLOv5 detection head, model and yaml parser.

`DetectionModel` (alias `Model`, the name v6.x checkpoints pickle) is built from a model yaml in upstream's format.
Module names in the yaml are resolved through a registry, never `eval`.
"""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.common import SPP, SPPF, Bottleneck, C3, C3Ghost, Concat, Conv, DWConv, Focus, GhostBottleneck, GhostConv
from utils.errors import UserError
from utils.files import yaml_load
from utils.log import LOGGER

MODELS_DIR = Path(__file__).resolve().parent


class Detect(nn.Module):
    """Per level, a 1x1 conv predicting na anchors x (4 box + 1 objectness + nc classes); decodes boxes in eval mode.

    `anchors` (a buffer) is in units of each level's stride; `stride` is set by the model after a dry run.
    """

    stride = None  # set by DetectionModel
    dynamic = False  # rebuild grids on every call (for exports with dynamic shapes)
    export = False  # return only the decoded predictions

    def __init__(self, nc: int = 80, anchors=(), ch=(), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[torch.Tensor]):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            # (bs, na*no, ny, nx) -> (bs, na, ny, nx, no)
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                grid = self.grid[i]
                if self.dynamic or grid.shape[2:4] != (ny, nx) or grid.device != x[i].device:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i, x[i].dtype)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self.grid[i]) * self.stride[i]
                wh = (wh * 2) ** 2 * self.anchor_grid[i]
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        if self.training:
            return x
        return (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), x)

    def _make_grid(self, nx: int, ny: int, i: int, dtype: torch.dtype):
        d = self.anchors[i].device
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=dtype), torch.arange(nx, device=d, dtype=dtype),
                                indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5  # cell offset so that 2*sigmoid-0.5 spans [-0.5, 1.5]
        anchor_grid = (self.anchors[i] * self.stride[i]).to(dtype).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


# Modules a yaml may name. Upstream yamls write torch layers as `nn.Name`.
REGISTRY: dict[str, type[nn.Module]] = {
    c.__name__: c
    for c in (Conv, DWConv, Focus, Bottleneck, C3, SPP, SPPF, Concat, GhostConv, GhostBottleneck, C3Ghost, Detect)
}
REGISTRY.update({f"nn.{c.__name__}": c for c in (nn.Upsample, nn.BatchNorm2d, nn.Identity, nn.MaxPool2d)})
# Modules whose first two arguments are (c_in, c_out), with c_out scaled by width_multiple.
CHANNEL_MODULES = {Conv, DWConv, Focus, Bottleneck, C3, SPP, SPPF, GhostConv, GhostBottleneck, C3Ghost}
# Modules that take the repeat count as their third argument instead of being stacked.
REPEAT_MODULES = {C3, C3Ghost}


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _resolve_arg(a: Any, d: dict) -> Any:
    """yaml arguments may name `nc`, `anchors` or None; any other string stays a string (e.g. 'nearest')."""
    if isinstance(a, str):
        if a in ("nc", "anchors"):
            return d[a]
        if a == "None":
            return None
    return a


def _check_yaml(d: dict, source: str) -> None:
    """The shape of a model dict, checked before anything is built: a hand-edited yaml fails with one line here."""
    def num(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def whole(x) -> bool:  # an int that is not a bool
        return isinstance(x, int) and not isinstance(x, bool)

    if not (whole(d["nc"]) and d["nc"] >= 1):
        raise UserError(f"{source}: nc must be a positive integer, got {d['nc']!r}")
    for k in ("depth_multiple", "width_multiple"):
        if not (num(d.get(k, 1.0)) and d.get(k, 1.0) > 0):
            raise UserError(f"{source}: {k} must be a positive number, got {d.get(k)!r}")
    a = d["anchors"]
    ok = (whole(a) and a >= 1) or (
        isinstance(a, list) and a and all(isinstance(r, list) and r and len(r) % 2 == 0 and all(num(v) and v > 0
                                                                                                for v in r) for r in a))
    if not ok:
        raise UserError(f"{source}: anchors must be a list of [w, h, w, h, ...] lists of positive numbers per level, "
                        f"or a number of anchors per level; got {a!r}")
    for part in ("backbone", "head"):
        if not isinstance(d[part], list) or not d[part]:
            raise UserError(f"{source}: {part} must be a non-empty list of layers")
    for i, layer in enumerate(d["backbone"] + d["head"]):
        if not (isinstance(layer, list) and len(layer) == 4):
            raise UserError(f"{source}: layer {i}: expected [from, number, module, args], got {layer!r}")
        f, n, name, args = layer
        froms = f if isinstance(f, list) else [f]
        if not froms or not all(whole(x) and -max(i, 1) <= x < i for x in froms):
            raise UserError(f"{source}: layer {i}: 'from' must name earlier layers (-1 or indices < {i}), got {f!r}")
        if not (whole(n) and n >= 0):  # 0: a C3 whose bottlenecks were removed
            raise UserError(f"{source}: layer {i}: number must be a non-negative integer, got {n!r}")
        if not isinstance(name, str) or not isinstance(args, list):
            raise UserError(f"{source}: layer {i}: module must be a name and args a list, got {name!r}, {args!r}")


def parse_model(d: dict, ch: list[int], source: str = "model yaml") -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a model dict; return (layers, indices whose outputs later layers read).

    A pruned model's yaml (`exact_widths: true`) gives every width as it is (no rounding to multiples of 8), and a
    block's inner widths as a trailing `{...}` argument: `[-1, 1, C3, [37, True, {cv1: 12, cv2: 9, m: [[7, 12]]}]]`.
    """
    _check_yaml(d, source)
    anchors, nc = d["anchors"], d["nc"]
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    exact = bool(d.get("exact_widths", False))
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        m = REGISTRY.get(name)
        if m is None:
            raise UserError(f"{source}: layer {i}: unknown module '{name}' (known: {', '.join(sorted(REGISTRY))})")
        args = [_resolve_arg(a, d) for a in args]
        kwargs = {"widths": args.pop()} if args and isinstance(args[-1], dict) else {}
        n = max(round(n * gd), 1) if n > 1 else n
        if m in CHANNEL_MODULES:
            c1, c2 = ch[f], args[0]
            if c2 != no and not exact:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m in REPEAT_MODULES:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # a number of anchors per level: placeholder sizes, AutoAnchor replaces them
                args[1] = [list(range(args[1] * 2))] * len(f)
        else:
            c2 = ch[f]
        if not (isinstance(c2, int) and c2 >= 1):
            raise UserError(f"{source}: layer {i}: {name} would have {c2!r} output channels")
        try:
            m_ = nn.Sequential(*(m(*args, **kwargs) for _ in range(n))) if n > 1 else m(*args, **kwargs)
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, RuntimeError) as e:
            raise UserError(f"{source}: layer {i}: bad arguments {args} for {name}: {e}") from None
        m_.i, m_.f, m_.type = i, f, f"{m.__module__}.{m.__name__}"
        m_.np = sum(x.numel() for x in m_.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


def find_model_yaml(cfg: str | Path) -> Path:
    """A path as given, or a bare name found under models/ (e.g. 'yolov5s.yaml', 'yolov5s-ghost.yaml')."""
    p = Path(cfg)
    if p.suffix == "":
        p = p.with_suffix(".yaml")
    if p.is_file():
        return p
    for q in (MODELS_DIR / p.name, MODELS_DIR / "hub" / p.name):
        if q.is_file():
            return q
    raise UserError(f"model yaml not found: {cfg}")


class DetectionModel(nn.Module):
    """A YOLOv5 detector built from a model yaml (path, bare name or dict)."""

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None, anchors=None):
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml = deepcopy(cfg)
            source = "model yaml"
        else:
            path = find_model_yaml(cfg)
            self.yaml_file, source = path.name, str(cfg)
            self.yaml = yaml_load(path)
        missing = [k for k in ("nc", "anchors", "backbone", "head") if k not in self.yaml]
        if missing:
            raise UserError(f"{source}: missing key(s) {', '.join(missing)}")
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            LOGGER.info(f"Overriding {source} nc={self.yaml['nc']} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info(f"Overriding {source} anchors with anchors={anchors}")
            self.yaml["anchors"] = anchors
        try:
            self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch], source=source)
        except (TypeError, IndexError, KeyError, ValueError, ZeroDivisionError) as e:  # args that fit no layer
            raise UserError(f"{source}: cannot build the model ({type(e).__name__}: {str(e)[:160]})") from None
        self.names = {i: str(i) for i in range(self.yaml["nc"])}
        self.inplace = self.yaml.get("inplace", True)
        self._init_strides(ch)
        initialize_weights(self)

    def _init_strides(self, ch: int) -> None:
        m = self.model[-1]
        if not isinstance(m, Detect):
            raise UserError("the last layer of a model yaml must be Detect")
        s = 256
        m.inplace = self.inplace
        self.train()  # Detect returns the raw feature maps in training mode
        for bn in self.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.eval()  # the dry run must not touch running statistics
        try:
            with torch.no_grad():
                m.stride = torch.tensor([s / x.shape[-2] for x in self.forward(torch.zeros(1, ch, s, s))])
        except (RuntimeError, TypeError, IndexError, ValueError) as e:  # layers that do not fit together
            msg = str(e).splitlines()[0][:200]
            raise UserError(f"the model yaml builds but does not run on a {s}x{s} image: {msg}") from None
        self.train()
        check_anchor_order(m)
        m.anchors /= m.stride.view(-1, 1, 1)
        self.stride = m.stride
        self._initialize_biases()

    def forward(self, x: torch.Tensor):
        y = []  # outputs kept for later layers (None where nobody reads them)
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Objectness prior of ~8 objects per 640 image; class prior 0.6/nc (or class frequencies cf)."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999)) if cf is None else torch.log(cf / cf.sum())
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def fuse(self) -> "DetectionModel":
        """Fold every BatchNorm into the preceding conv (inference only)."""
        from utils.torch_utils import fuse_conv_and_bn

        for m in self.model.modules():
            if isinstance(m, Conv) and "bn" in m._modules:
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                del m.bn
        return self

    def _apply(self, fn, *args, **kwargs):
        # stride and grids are plain tensors, not buffers: move/cast them with the model
        self = super()._apply(fn, *args, **kwargs)
        m = self.model[-1]
        if isinstance(m, Detect):
            m.stride = fn(m.stride)
            m.grid = [torch.empty(0) for _ in range(m.nl)]
            m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
        return self


Model = DetectionModel  # the name YOLOv5 v6.x checkpoints pickle


def check_anchor_order(m: Detect) -> None:
    """Anchors must grow with stride (small anchors on the fine P3 level); flip them if the yaml lists them reversed."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da = a[-1] - a[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        LOGGER.info("Reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's BatchNorm settings (eps 1e-3, momentum 0.03) and in-place activations; convs keep PyTorch's init."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True
