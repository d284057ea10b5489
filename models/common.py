"""Building blocks of YOLOv5 models.

Class names, module paths and attribute names (`conv`, `bn`, `act`, `cv1`, `cv2`, `cv3`, `m`, `add`, `d`, ...)
match upstream YOLOv5 so that its pickled checkpoints unpickle into these classes and their state_dict keys agree.
`forward` only reads attributes that such checkpoints carry.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size for stride 1 ('same' padding)."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU. After fusing, `bn` is gone and `conv` carries a bias."""

    default_act = nn.SiLU()  # one stateless instance shared by all convs, as upstream (its layer counts rely on it)

    def __init__(self, c1: int, c2: int, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "bn" in self._modules:
            return self.act(self.bn(self.conv(x)))
        return self.act(self.conv(x))


class DWConv(Conv):
    """Depth-wise convolution: groups = gcd(c1, c2)."""

    def __init__(self, c1: int, c2: int, k=1, s=1, d=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels into channels) then Conv; the stem of YOLOv5 releases before v6.0."""

    def __init__(self, c1: int, c2: int, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


def _widths(widths: dict | None, allowed: set[str], module: str) -> dict:
    """The explicit inner widths a pruned model yaml gives a block (its trailing `{...}` argument)."""
    widths = dict(widths or {})
    unknown = set(widths) - allowed
    if unknown:
        raise ValueError(f"{module} takes inner widths {sorted(allowed)}, not {sorted(unknown)}")
    return widths


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 expand, with a residual add when the shapes allow it.

    widths: {"c_": hidden width} instead of c2 * e (pruned models).
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 widths: dict | None = None):
        super().__init__()
        c_ = _widths(widths, {"c_"}, "Bottleneck").get("c_", int(c2 * e))
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: two 1x1 branches (one through n bottlenecks), concatenated and mixed by a third 1x1 conv.

    widths (pruned models): {"cv1": a, "cv2": b, "m": [[hidden, out], ...]}, the output widths of cv1, cv2 and of each
    bottleneck's two convs, instead of c2 * e everywhere. A bottleneck adds its input only where in == out.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 widths: dict | None = None):
        super().__init__()
        c_ = int(c2 * e)
        w = _widths(widths, {"cv1", "cv2", "m"}, type(self).__name__)
        a, b = w.get("cv1", c_), w.get("cv2", c_)
        inner = w.get("m", [[self._hidden(a), a]] * n)
        if len(inner) != n:
            raise ValueError(f"{type(self).__name__}: {n} bottlenecks but {len(inner)} entries in widths['m']")
        self.cv1 = Conv(c1, a, 1, 1)
        self.cv2 = Conv(c1, b, 1, 1)
        blocks, c = [], a
        for hidden, out in (self._pair(x) for x in inner):
            blocks.append(self._block(c, out, hidden, shortcut, g))
            c = out
        self.cv3 = Conv(c + b, c2, 1)
        self.m = nn.Sequential(*blocks)

    @staticmethod
    def _pair(x) -> tuple[int, int]:
        if not (isinstance(x, (list, tuple)) and len(x) == 2):
            raise ValueError(f"widths['m'] entries are [hidden, out], not {x!r}")
        return int(x[0]), int(x[1])

    @staticmethod
    def _hidden(c: int) -> int:
        return c  # Bottleneck(c, c, e=1.0)

    @staticmethod
    def _block(c1: int, c2: int, hidden: int, shortcut: bool, g: int) -> nn.Module:
        return Bottleneck(c1, c2, shortcut, g, widths={"c_": hidden})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools of several sizes (YOLOv3 style). widths: {"c_": cv1's width}."""

    def __init__(self, c1: int, c2: int, k=(5, 9, 13), widths: dict | None = None):
        super().__init__()
        c_ = _widths(widths, {"c_"}, "SPP").get("c_", c1 // 2)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """SPP with one k x k max-pool applied three times in series: the receptive fields of SPP(k, 2k-1, 3k-2).

    widths: {"c_": cv1's width} instead of c1 // 2 (pruned models).
    """

    def __init__(self, c1: int, c2: int, k: int = 5, widths: dict | None = None):
        super().__init__()
        c_ = _widths(widths, {"c_"}, "SPPF").get("c_", c1 // 2)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along dimension `d`."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class GhostConv(nn.Module):
    """Ghost convolution (GhostNet): half the outputs from a conv, the other half from a cheap 5x5 depth-wise conv."""

    def __init__(self, c1: int, c2: int, k=1, s=1, g=1, act=True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act=act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


class GhostBottleneck(nn.Module):
    """Ghost bottleneck: GhostConv, optional stride-2 depth-wise conv, GhostConv; residual (projected when s=2).

    widths: {"c_": the first GhostConv's output width} instead of c2 // 2 (pruned models).
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, widths: dict | None = None):
        super().__init__()
        c_ = _widths(widths, {"c_"}, "GhostBottleneck").get("c_", c2 // 2)
        self.conv = nn.Sequential(
            GhostConv(c1, c_, 1, 1),
            DWConv(c_, c_, k, s, act=False) if s == 2 else nn.Identity(),
            GhostConv(c_, c2, 1, 1, act=False),
        )
        self.shortcut = (
            nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False)) if s == 2 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


class C3Ghost(C3):
    """C3 whose bottlenecks are GhostBottlenecks (always residual: widths['m'] entries are [hidden, cv1's width])."""

    @staticmethod
    def _hidden(c: int) -> int:
        return c // 2

    @staticmethod
    def _block(c1: int, c2: int, hidden: int, shortcut: bool, g: int) -> nn.Module:
        return GhostBottleneck(c1, c2, widths={"c_": hidden})
