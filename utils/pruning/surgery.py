"""Channel surgery: a copy of a DetectionModel with some channels of some groups removed, weights sliced.

`prune_channels(model, keep)` takes, per group index (in `build_groups(model)`), the channels to keep. Every member
BN and its conv lose the other channels (a depth-wise conv loses the matching inputs too) and every consumer conv
loses the matching input channels. Nothing is rebuilt from a yaml here; the model is edited in memory.

Folding. A removed channel still carries a signal in the original model. When its BN gamma is (near) zero, the
channel's tensor is (nearly) the constant act(beta) -- or, after a residual add, a sum of such constants; max-pooling
and upsampling keep it. Dropping it would shift every consumer's output by sum_j a_j * sum_{kh,kw} W[:, j], so that
shift is folded into the consumer: subtracted from the running mean of the BN after it, or added to its bias.
The constants a_j are measured, not derived by hand: a float64 copy of the model with the removed channels' gamma set
to 0 runs one small forward pass in eval mode, and each consumer conv's removed input channels are read (they are
spatially constant there). This covers residual adds, SPPF's repeated pooling and Concat offsets with one rule.

Approximations: (1) the gamma * x_hat term of a removed channel is dropped (exact when gamma == 0); (2) a k x k
consumer with zero padding does not see the constant at its padded taps, so after folding, outputs of 3x3 consumers
differ in the border ring (1x1 consumers -- most of YOLOv5, Detect included -- are exact); (3) the fold targets eval
mode (running statistics); in training mode a BN removes a constant shift through the batch mean anyway.
"""

from __future__ import annotations

from copy import deepcopy
from functools import partial
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from utils.pruning.graph import ChannelGroup, build_groups, probe_size

__all__ = ["prune_channels", "removed_channels", "soft_prune"]


def _keep_index(keep, channels: int, k: int) -> torch.Tensor:
    """A keep list checked and made a sorted 1-D LongTensor (a 0-d tensor or a plain int list are accepted)."""
    idx = torch.as_tensor(keep).reshape(-1)
    if idx.numel() == 0:
        raise ValueError(f"group {k}: keep is empty; a group must keep at least one of its {channels} channels")
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"group {k}: keep must hold integer channel indices, got dtype {idx.dtype}")
    idx = idx.long().cpu()
    if int(idx.min()) < 0 or int(idx.max()) >= channels:
        raise ValueError(f"group {k}: keep indices must lie in 0..{channels - 1}")
    sorted_idx = idx.unique(sorted=True)
    if sorted_idx.numel() != idx.numel():
        raise ValueError(f"group {k}: keep has repeated indices")
    return sorted_idx


def removed_channels(groups: Sequence[ChannelGroup], keep: Mapping[int, object]) -> dict[int, torch.Tensor]:
    """Group index -> the removed group channels (possibly empty), after checking `keep`."""
    out = {}
    for k, kept in keep.items():
        if not 0 <= k < len(groups):
            raise ValueError(f"group index {k} out of range: the model has {len(groups)} groups")
        n = groups[k].channels
        mask = torch.ones(n, dtype=torch.bool)
        mask[_keep_index(kept, n, k)] = False
        out[k] = mask.nonzero().flatten()
    return out


def _capture(store: dict, name: str, idx: torch.Tensor, module: nn.Module, inputs) -> None:
    store[name] = inputs[0][:, idx.to(inputs[0].device)].mean((0, 2, 3))


def _removed_input_constants(model: nn.Module, groups, removed) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Consumer Conv2d name -> (removed input channels, the constant each carries once its gammas are zero)."""
    wanted: dict[str, set[int]] = {}
    for k, r in removed.items():
        for conv, off in groups[k].consumers:
            wanted.setdefault(conv, set()).update((off + r).tolist())
    if not wanted:
        return {}
    p = next(model.parameters())
    calib = deepcopy(model).eval()
    calib = calib.to(torch.float64) if p.device.type in ("cpu", "cuda") else calib.float()
    modules = dict(calib.named_modules())
    with torch.no_grad():
        for k, r in removed.items():
            for m in groups[k].members:
                modules[m.bn].weight[m.offset + r] = 0
    idx = {c: torch.tensor(sorted(s), dtype=torch.long) for c, s in wanted.items()}
    store: dict[str, torch.Tensor] = {}
    hooks = [modules[c].register_forward_pre_hook(partial(_capture, store, c, i)) for c, i in idx.items()]
    ch = getattr(model, "yaml", {}).get("ch", 3)
    s = probe_size(model)
    try:
        with torch.no_grad():
            calib(torch.zeros(1, ch, s, s, device=p.device, dtype=next(calib.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()
    missing = set(idx) - set(store)
    if missing:
        raise RuntimeError(f"consumer conv(s) not run in the forward pass: {', '.join(sorted(missing))}")
    return {c: (idx[c], store[c]) for c in idx}


def _fold(model: nn.Module, constants: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Move each consumer's response to its removed constant inputs into its BN running mean or its bias."""
    modules = dict(model.named_modules())
    for name, (idx, value) in constants.items():
        conv = modules[name]
        if conv.groups != 1:
            raise RuntimeError(f"{name}: grouped conv (groups={conv.groups}) as a consumer cannot be folded")
        w = conv.weight.detach().to(value.dtype)[:, idx.to(conv.weight.device)].sum((2, 3))  # (out, removed)
        shift = w @ value.to(w.device)  # what the removed inputs added to every (interior) output pixel
        parent = modules.get(name.rsplit(".", 1)[0]) if name.endswith(".conv") else None
        bn = parent._modules.get("bn") if parent is not None and parent._modules.get("conv") is conv else None
        with torch.no_grad():
            if conv.bias is not None:
                conv.bias += shift.to(conv.bias.dtype)
            elif isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
                bn.running_mean -= shift.to(bn.running_mean.dtype)  # bn normalises (y - mean)
            else:
                conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def _new_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Conv2d:
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
    w = conv.weight.detach()
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        if depthwise:
            raise RuntimeError("a depth-wise conv's inputs go with its outputs; it cannot be a consumer")
        if conv.groups != 1:
            raise RuntimeError(f"cannot remove input channels of a grouped conv (groups={conv.groups})")
        w = w.index_select(1, in_idx.to(w.device))
    c2 = w.shape[0]
    c1 = c2 if depthwise else w.shape[1] * conv.groups
    new = nn.Conv2d(c1, c2, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=c2 if depthwise else conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=w.device, dtype=w.dtype)
    new.weight = nn.Parameter(w.clone(), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        b = conv.bias.detach()
        b = b.index_select(0, out_idx.to(b.device)) if out_idx is not None else b
        new.bias = nn.Parameter(b.clone(), requires_grad=conv.bias.requires_grad)
    new.train(conv.training)
    return new


def _new_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device if bn.affine else None,
                         dtype=bn.weight.dtype if bn.affine else None)
    with torch.no_grad():
        for name in ("weight", "bias"):
            old = getattr(bn, name)
            if old is not None:
                setattr(new, name, nn.Parameter(old.detach().index_select(0, idx.to(old.device)).clone(),
                                                requires_grad=old.requires_grad))
        for name in ("running_mean", "running_var"):
            old = getattr(bn, name)
            if old is not None:
                setattr(new, name, old.index_select(0, idx.to(old.device)).clone())
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked = bn.num_batches_tracked.clone()
    new.train(bn.training)
    return new


def _kept(n: int, removed: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in removed], dtype=torch.long)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _folded_copy(model: nn.Module, keep: Mapping[int, object], groups: Sequence[ChannelGroup] | None, fold: bool):
    """(groups, group -> removed channels (non-empty only), a deep copy with the removed constants folded)."""
    groups = build_groups(model) if groups is None else list(groups)
    removed = {k: r for k, r in removed_channels(groups, keep).items() if r.numel()}
    out = deepcopy(model)
    if removed and fold:
        _fold(out, _removed_input_constants(model, groups, removed))
    return groups, removed, out


def prune_channels(model: nn.Module, keep: Mapping[int, object], groups: Sequence[ChannelGroup] | None = None,
                   fold: bool = True) -> nn.Module:
    """A deep copy of `model` keeping, for each group index in `keep`, only those group channels (others whole).

    `groups` defaults to `build_groups(model)`; pass the list the indices refer to if it was built otherwise.
    `fold` moves the removed channels' gamma-free constants into their consumers (see the module docstring).
    Raises ValueError for an empty, out-of-range or repeated keep list: no layer is ever emptied.
    """
    groups, removed, out = _folded_copy(model, keep, groups, fold)
    if not removed:
        return out
    out_rm: dict[str, set[int]] = {}  # Conv2d / BatchNorm2d name -> removed output channels
    in_rm: dict[str, set[int]] = {}  # Conv2d name -> removed input channels
    for k, r in removed.items():
        g = groups[k]
        for m in g.members:
            out_rm.setdefault(m.bn, set()).update((m.offset + r).tolist())
            out_rm.setdefault(m.conv, set()).update((m.offset + r).tolist())
        for conv, off in g.consumers:
            in_rm.setdefault(conv, set()).update((off + r).tolist())

    modules = dict(out.named_modules())
    for name in dict.fromkeys([*out_rm, *in_rm]):
        m = modules[name]
        if isinstance(m, nn.BatchNorm2d):
            _replace(out, name, _new_bn(m, _kept(m.num_features, out_rm[name])))
        elif isinstance(m, nn.Conv2d):
            o = _kept(m.out_channels, out_rm[name]) if name in out_rm else None
            i = _kept(m.in_channels, in_rm[name]) if name in in_rm else None
            _replace(out, name, _new_conv(m, o, i))
        else:
            raise RuntimeError(f"{name}: expected Conv2d or BatchNorm2d, found {type(m).__name__}")

    for layer in getattr(out, "model", []):  # per-layer parameter counts, as parse_model sets them
        if hasattr(layer, "np"):
            layer.np = sum(x.numel() for x in layer.parameters())
    return out


def soft_prune(model: nn.Module, keep: Mapping[int, object], groups: Sequence[ChannelGroup] | None = None,
               fold: bool = True) -> nn.Module:
    """A deep copy of `model` with the same architecture in which the channels `prune_channels` would remove output
    exactly zero (gamma and beta zeroed in every member) and, with `fold`, the same constants folded into their
    consumers. Its outputs equal those of `prune_channels(model, keep, groups, fold)`: a reference for tests and a
    way to evaluate a selection without surgery."""
    groups, removed, out = _folded_copy(model, keep, groups, fold)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for k, r in removed.items():
            for m in groups[k].members:
                bn = modules[m.bn]
                idx = (m.offset + r).to(bn.weight.device)
                bn.weight[idx] = 0
                bn.bias[idx] = 0
    return out
