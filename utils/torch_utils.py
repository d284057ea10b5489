"""PyTorch helpers: devices, model summaries (parameters, GFLOPs), Conv+BN fusion, timing."""

from __future__ import annotations

import os
import time
from copy import deepcopy

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.log import LOGGER


def select_device(device: str | torch.device = "") -> torch.device:
    """'' (CUDA if available, else CPU), 'cpu', '0', '0,1', 'cuda', 'cuda:1', 'mps'. Asking for a GPU that is not
    there is a UserError rather than a crash deep inside PyTorch."""
    if isinstance(device, torch.device):
        return device
    d = str(device).strip().lower().replace("cuda:", "").replace("cuda", "0").replace(" ", "")
    if d == "cpu":
        return torch.device("cpu")
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("--device mps requested but MPS is not available")
        return torch.device("mps")
    if d == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not all(x.isdigit() for x in d.split(",")):
        raise UserError(f"invalid --device '{device}' (use cpu, 0, 0,1 or cuda:0)")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but CUDA is not available (use --device cpu)")
    ids = [int(x) for x in d.split(",")]
    if max(ids) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    local_rank = int(os.getenv("LOCAL_RANK", -1))
    return torch.device(f"cuda:{ids[local_rank] if 0 <= local_rank < len(ids) else ids[0]}")


def time_sync() -> float:
    """Wall time after waiting for queued CUDA work, so stage timings are real."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_flops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs (2 x multiply-accumulates, thop's count) of one forward pass at imgsz.

    Profiled at the model's largest stride and scaled by area, as upstream does, so it is cheap for any size.
    """
    try:
        import thop
    except ImportError:
        return 0.0
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    p = next(model.parameters())
    im = torch.empty((1, p.shape[1] if p.dim() == 4 else 3, stride, stride), device=p.device)
    macs = thop.profile(deepcopy(model).float().to(p.device), inputs=(im.float(),), verbose=False)[0]
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    return macs * 2 / 1e9 * (h / stride) * (w / stride)


def model_info(model: nn.Module, imgsz: int = 640, name: str | None = None, verbose: bool = True) -> dict:
    """Upstream's summary line: '<name> summary: L layers, P parameters, G gradients, F GFLOPs'."""
    n_p = count_params(model)
    n_g = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gflops = model_flops(model, imgsz)
    layers = len(list(model.modules()))
    if name is None:
        yf = getattr(model, "yaml_file", "") or ""
        name = str(yf).replace(".yaml", "").replace("yolov5", "YOLOv5") if yf else "Model"
    if verbose:
        LOGGER.info(f"{name} summary: {layers} layers, {n_p:,} parameters, {n_g:,} gradients, {gflops:.1f} GFLOPs")
    return {"layers": layers, "params": n_p, "gradients": n_g, "GFLOPs": gflops}


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias computing bn(conv(x)) in eval mode.

    w' = w * g / s and b' = beta + (b - mean) * g / s, with s = sqrt(var + eps).
    """
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=True)
    fused = fused.requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (b - bn.running_mean) * scale)
    return fused


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> int:
    """Recompute every BatchNorm's running mean and variance as the plain average over `batches` (input tensors)
    run in train-mode BN without gradients: "adaptive BN" (EagleEye). Running statistics that lag behind fast-changing
    weights (sparse training) or that belong to another architecture (a pruned sub-net) are replaced by the statistics
    the weights actually produce. Returns the number of batches used; other modules stay in eval mode."""
    batches = list(batches)
    if not batches:
        raise ValueError("recalibrate_bn needs at least one batch")
    modes = [(m, m.training) for m in model.modules()]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    model.eval()
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts equally
            m.train()
        for x in batches:
            model(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, training in modes:
            m.training = training
    return len(batches)


def spread_bn(m: nn.Module, seed: int = 0, running_stats: bool = False) -> nn.Module:
    """Give m's BatchNorm layers the look of a sparse-trained model, for benchmarks and tests: gammas spread over
    [0, 1.5) with 30% of them zero, betas away from 0; with running_stats, running means and variances away from
    their defaults too (what a check of BN folding needs)."""
    g = torch.Generator().manual_seed(seed)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.weight.data = torch.rand(n, generator=g) * 1.5 * (torch.rand(n, generator=g) > 0.3)
            bn.bias.data = torch.randn(n, generator=g) * 0.3
            if running_stats:
                bn.running_mean = torch.randn(n, generator=g) * 0.1
                bn.running_var = torch.rand(n, generator=g) + 0.5
    return m
