"""Channel surgery: removed channels whose gamma is exactly 0 are folded, so the pruned model's outputs are unchanged
(1x1 consumers everywhere, interiors for 3x3 consumers); parameter counts, ghost depth-wise ties, width-1 groups."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.pruning.graph import build_groups
from utils.pruning.surgery import prune_channels


def _randomise(m: DetectionModel, beta_scale: float = 0.5) -> DetectionModel:
    g = torch.Generator().manual_seed(0)
    for bn in m.modules():  # away from the defaults, with betas large enough that dropped constants would show
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=g) * beta_scale)
    return m.eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


@pytest.fixture(scope="module")
def n_model(one_thread):
    torch.manual_seed(0)
    return _randomise(DetectionModel("yolov5n.yaml", nc=3))


def _index(groups, bn: str) -> int:
    return next(k for k, g in enumerate(groups) if bn in g.bns)


def _zero_and_keep(model, groups, k: int, removed: torch.Tensor, zero_beta: bool = False) -> torch.Tensor:
    """Set gamma (and optionally beta) of the removed channels to 0 in every member; return the keep list."""
    modules = dict(model.named_modules())
    for mem in groups[k].members:
        modules[mem.bn].weight.data[mem.offset + removed] = 0
        if zero_beta:
            modules[mem.bn].bias.data[mem.offset + removed] = 0
    mask = torch.ones(groups[k].channels, dtype=torch.bool)
    mask[removed] = False
    return mask.nonzero().flatten()


def _run(model, x):
    with torch.no_grad():
        z, raw = model(x)
    return z, raw


def _close(a, b) -> bool:
    za, ra = a
    zb, rb = b
    return torch.allclose(za, zb, rtol=1e-5, atol=1e-3) and all(
        torch.allclose(p, q, atol=1e-4) for p, q in zip(ra, rb))


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# residual (backbone C3 cv1 + bottleneck cv2s), a C3 cv1 inside a head C3, a Conv feeding two Concats, SPPF cv1,
# a C3 cv3 feeding only Detect: all their consumers are 1x1 convs, so folding is exact
EXACT = ["model.4.cv1.bn", "model.6.cv1.bn", "model.13.cv1.bn", "model.10.bn", "model.9.cv1.bn", "model.23.cv3.bn"]


def test_exact_with_folding(n_model):
    model = _randomise(DetectionModel("yolov5n.yaml", nc=3))
    groups = build_groups(model)
    keep = {}
    for bn in EXACT:
        k = _index(groups, bn)
        keep[k] = _zero_and_keep(model, groups, k, torch.arange(1, groups[k].channels, 3))
    assert any(groups[k].residual for k in keep)
    x = torch.rand(2, 3, 128, 96)
    before = _run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_channels(model, keep)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the original is untouched
    assert _params(pruned) < _params(model)
    assert _close(_run(pruned, x), before)
    assert not _close(_run(prune_channels(model, keep, fold=False), x), before)  # the constants mattered
    modules = dict(pruned.named_modules())
    k = _index(groups, "model.9.cv1.bn")  # SPPF: cv2 reads cv1's channels at four offsets
    n = len(keep[k])
    assert modules["model.9.cv1.conv"].out_channels == modules["model.9.cv1.bn"].num_features == n
    assert modules["model.9.cv2.conv"].in_channels == 4 * n
    assert modules["model.9.cv2.conv"].weight.shape[1] == 4 * n
    for mem in groups[_index(groups, "model.6.cv1.bn")].members:  # residual: every add operand shrank
        assert modules[mem.bn].num_features == modules[mem.conv].out_channels == len(keep[_index(groups, mem.bn)])


def _capture(store, name, module, inputs, output):
    store[name] = output.detach()


@pytest.mark.parametrize("bn, watch, exact_level", [
    ("model.2.m.0.cv1.bn", "model.2.m.0.cv2", None),  # consumer: a 3x3 conv
    ("model.17.cv3.bn", "model.18", 0),  # consumers: model.18 (3x3, stride 2) and Detect level 0 (1x1)
])
def test_3x3_consumer_interior(bn, watch, exact_level):
    model = _randomise(DetectionModel("yolov5n.yaml", nc=3))
    groups = build_groups(model)
    k = _index(groups, bn)
    keep = {k: _zero_and_keep(model, groups, k, torch.arange(0, groups[k].channels, 2))}
    x = torch.rand(1, 3, 128, 128)
    outs = []
    for m in (model, prune_channels(model, keep)):
        store = {}
        h = dict(m.named_modules())[watch].register_forward_hook(partial(_capture, store, watch))
        outs.append((_run(m, x), store[watch]))
        h.remove()
    (before, a), (after, b) = outs
    assert torch.allclose(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], atol=1e-4)  # interior: exact
    assert not torch.allclose(a, b, atol=1e-4)  # border ring: padded taps never saw the constant (documented)
    if exact_level is not None:
        assert torch.allclose(before[1][exact_level], after[1][exact_level], atol=1e-4)


def test_3x3_consumer_zero_beta_exact():
    """With beta = 0 too, SiLU(0) = 0: there is nothing to fold and every output matches, borders included."""
    model = _randomise(DetectionModel("yolov5n.yaml", nc=3))
    groups = build_groups(model)
    keep = {}
    for bn in ("model.0.bn", "model.2.m.0.cv1.bn", "model.17.cv3.bn", "model.8.cv2.bn"):
        k = _index(groups, bn)
        keep[k] = _zero_and_keep(model, groups, k, torch.arange(0, groups[k].channels, 2), zero_beta=True)
    x = torch.rand(1, 3, 96, 64)
    assert _close(_run(prune_channels(model, keep), x), _run(model, x))


def test_param_count_by_hand(n_model):
    groups = build_groups(n_model)
    k = _index(groups, "model.13.cv1.bn")  # 1x1 conv, read only by model.13.m.0.cv1.conv (1x1)
    g = groups[k]
    assert len(g.members) == 1 and len(g.consumers) == 1
    modules = dict(n_model.named_modules())
    conv, consumer = modules[g.members[0].conv], modules[g.consumers[0][0]]
    assert consumer.kernel_size == (1, 1)
    removed = 5
    pruned = prune_channels(n_model, {k: torch.arange(removed, g.channels)})
    c_in, kh, kw = conv.weight.shape[1:]
    drop = removed * (c_in * kh * kw + 2) + removed * consumer.out_channels
    assert _params(n_model) - _params(pruned) == drop
    assert dict(pruned.named_modules())["model.13"].np == modules["model.13"].np - drop
    bn = dict(pruned.named_modules())["model.13.cv1.bn"]
    assert bn.running_mean.shape == bn.running_var.shape == (g.channels - removed,)


def test_ghost_depthwise():
    torch.manual_seed(0)
    model = _randomise(DetectionModel("yolov5s-ghost.yaml", nc=3))
    groups = build_groups(model)
    assert any(m.depthwise for g in groups for m in g.members)
    keep = {}
    for k, g in enumerate(groups):  # remove every third channel of every group, gamma = beta = 0: exact
        keep[k] = _zero_and_keep(model, groups, k, torch.arange(0, g.channels, 3), zero_beta=True)
    x = torch.rand(1, 3, 64, 64)
    before = _run(model, x)
    pruned = prune_channels(model, keep)
    after = _run(pruned, x)
    assert after[0].shape == before[0].shape and [r.shape for r in after[1]] == [r.shape for r in before[1]]
    assert _close(after, before)
    assert _params(pruned) < 0.8 * _params(model)
    for g, kept in ((g, keep[k]) for k, g in enumerate(groups)):
        for mem in g.members:
            conv = pruned.get_submodule(mem.conv)
            if mem.depthwise:
                assert conv.groups == conv.in_channels == conv.out_channels == conv.weight.shape[0]
                assert conv.weight.shape[1] == 1
    model2 = _randomise(DetectionModel("yolov5s-ghost.yaml", nc=3))  # nonzero gammas and betas: runs, right shapes
    p2 = prune_channels(model2, {k: torch.arange(0, g.channels, 2) for k, g in enumerate(build_groups(model2))})
    z, raw = _run(p2, x)
    assert z.shape == before[0].shape and torch.isfinite(z).all()


def test_width_one_concat_input(n_model):
    model = _randomise(DetectionModel("yolov5n.yaml", nc=3))
    groups = build_groups(model)
    keep = {}
    for bn in ("model.10.bn", "model.14.bn"):  # each feeds two Concats
        k = _index(groups, bn)
        removed = torch.cat([torch.arange(0, 3), torch.arange(4, groups[k].channels)])
        keep[k] = _zero_and_keep(model, groups, k, removed)
        assert keep[k].tolist() == [3]
    x = torch.rand(1, 3, 64, 64)
    before = _run(model, x)
    pruned = prune_channels(model, keep)
    m = dict(pruned.named_modules())
    assert m["model.10.conv"].out_channels == m["model.10.bn"].num_features == 1
    assert m["model.10.conv"].weight.shape[0] == 1 and m["model.10.bn"].weight.shape == (1,)
    assert m["model.13.cv1.conv"].in_channels == m["model.13.cv1.conv"].weight.shape[1] == 1 + 128
    assert _close(_run(pruned, x), before)
    pruned.train()
    loss = sum(t.sum() for t in pruned(torch.rand(2, 3, 64, 64)))
    loss.backward()  # trains with width-1 layers
    assert m["model.10.bn"].weight.grad.shape == (1,)


def test_keep_whole_and_errors(n_model):
    groups = build_groups(n_model)
    same = prune_channels(n_model, {0: torch.arange(groups[0].channels)})
    assert _params(same) == _params(n_model)
    with pytest.raises(ValueError, match="empty"):
        prune_channels(n_model, {3: torch.tensor([], dtype=torch.long)})
    with pytest.raises(ValueError):
        prune_channels(n_model, {3: torch.tensor([groups[3].channels])})
    with pytest.raises(ValueError):
        prune_channels(n_model, {len(groups): torch.tensor([0])})
