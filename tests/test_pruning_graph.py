"""Channel-dependency groups: counts derived by hand from the yamls, and the recorded channel mapping checked
numerically (a zeroed group channel must show up exactly at the consumer inputs the group names)."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.pruning.graph import analyze_groups, build_groups, prunable_bns
from utils.pruning.groups import global_threshold, group_scores, safe_prune_percent

FOCUS_SPP = {"nc": 4, "depth_multiple": 0.33, "width_multiple": 0.25,
             "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
             "backbone": [[-1, 1, "Focus", [64, 3]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                          [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "Conv", [512, 3, 2]],
                          [-1, 1, "SPP", [512, [5, 9, 13]]]],
             "head": [[-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 3], 1, "Concat", [1]],
                      [-1, 1, "C3", [256, False]], [-1, 1, "Conv", [256, 3, 2]], [[-1, 5], 1, "Concat", [1]],
                      [-1, 1, "C3", [512, False]], [-1, 1, "Conv", [512, 3, 2]],
                      [[8, 11, 12], 1, "Detect", ["nc", "anchors"]]]}

# explicit widths that are not powers of two; e (last arg of Bottleneck/C3) gives odd inner widths 15 and 9
ODD = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
       "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
       "backbone": [[-1, 1, "Conv", [16, 3, 2]],  # 0
                    [-1, 1, "Conv", [24, 3, 2]],  # 1
                    [-1, 1, "Bottleneck", [24, True, 1, 0.625]],  # 2: cv1 15, cv2 24 added to layer 1
                    [-1, 1, "C3", [40, True, 1, 0.375]],  # 3: inner width 15, cv1 tied to m.0.cv2
                    [-1, 1, "Conv", [56, 3, 2]],  # 4
                    [-1, 1, "DWConv", [56, 3, 1]],  # 5: depth-wise, tied to layer 4
                    [-1, 1, "SPPF", [56, 5]]],  # 6: cv1 28
       "head": [[-1, 1, "nn.Upsample", ["None", 2, "nearest"]],  # 7
                [[-1, 3], 1, "Concat", [1]],  # 8: 56 + 40
                [-1, 1, "C3", [24, False, 1, 0.375]],  # 9: inner width 9
                [[9, 6], 1, "Detect", ["nc", "anchors"]]]}


def _model(cfg) -> DetectionModel:
    torch.manual_seed(0)
    m = DetectionModel(cfg, nc=3) if isinstance(cfg, str) else DetectionModel(copy.deepcopy(cfg))
    g = torch.Generator().manual_seed(0)
    for bn in m.modules():  # away from the defaults, so that a missed member cannot output 0 by accident
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def n_model():
    return _model("yolov5n.yaml")


def _by_bn(groups, bn):
    return next(g for g in groups if bn in g.bns)


def _check_invariants(model, analysis) -> None:
    """Every BN channel is in exactly one group, or its BN is unprunable with a reason; no BN in two groups."""
    modules = dict(model.named_modules())
    bns = [n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
    cover = {n: torch.zeros(modules[n].num_features, dtype=torch.long) for n in bns}
    group_of = {}
    for k, g in enumerate(analysis.groups):
        assert g.channels >= 1 and g.members
        for mem in g.members:
            conv = modules[mem.conv]
            assert isinstance(conv, nn.Conv2d) and conv.out_channels == modules[mem.bn].num_features
            cover[mem.bn][mem.offset:mem.offset + g.channels] += 1
            assert group_of.setdefault(mem.bn, k) == k
        for name, off in g.consumers:
            assert modules[name].groups == 1 and off + g.channels <= modules[name].in_channels
    for n in bns:
        if n in analysis.unprunable:
            assert analysis.unprunable[n] and (cover[n] == 0).all()
        else:
            assert (cover[n] == 1).all(), n


def _capture(store, name, module, inputs) -> None:
    store[name] = inputs[0].detach()


def _zero_input_channels(model, x) -> dict[str, set[int]]:
    """Per Conv2d, the input channels that are zero everywhere."""
    store = {}
    hooks = [m.register_forward_pre_hook(partial(_capture, store, n))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    zeros = {n: set((t.abs().amax((0, 2, 3)) == 0).nonzero().flatten().tolist()) for n, t in store.items()}
    return {n: z for n, z in zeros.items() if z}


def _assert_mapping(model, group, c, x) -> None:
    """Zero group channel c in every member (SiLU(0) = 0): zeros must appear exactly where the group says."""
    modules = dict(model.named_modules())
    saved = [(modules[m.bn], modules[m.bn].weight.data.clone(), modules[m.bn].bias.data.clone())
             for m in group.members]
    for m in group.members:
        modules[m.bn].weight.data[m.offset + c] = 0
        modules[m.bn].bias.data[m.offset + c] = 0
    try:
        zeros = _zero_input_channels(model, x)
    finally:
        for bn, w, b in saved:
            bn.weight.data.copy_(w)
            bn.bias.data.copy_(b)
    expected = {}
    for name, off in group.consumers:
        expected.setdefault(name, set()).add(off + c)
    for m in group.members:  # a depth-wise conv reads the channel it produces
        if m.depthwise:
            expected.setdefault(m.conv, set()).add(m.offset + c)
    assert zeros == expected


def test_yolov5n_groups_by_hand(n_model):
    a = analyze_groups(n_model)
    _check_invariants(n_model, a)
    assert a.unprunable == {}
    # Conv layers 0 1 3 5 7 10 14 18 21: one group each (9). A C3 with n bottlenecks has cv1, cv2, cv3 and n x
    # (m.cv1, m.cv2): with shortcut (backbone 2, 4, 6, 8; n = 1, 2, 3, 1) cv1 and every m.cv2 are one residual
    # group, so 3 + n groups; without (head 13, 17, 20, 23; n = 1) 3 + 2n = 5. SPPF: cv1, cv2.
    assert len(a.groups) == 9 + (4 + 5 + 6 + 4) + 4 * 5 + 2 == 50
    residual = [g.bns for g in a.groups if g.residual]
    assert residual == [["model.2.cv1.bn", "model.2.m.0.cv2.bn"],
                        ["model.4.cv1.bn", "model.4.m.0.cv2.bn", "model.4.m.1.cv2.bn"],
                        ["model.6.cv1.bn", "model.6.m.0.cv2.bn", "model.6.m.1.cv2.bn", "model.6.m.2.cv2.bn"],
                        ["model.8.cv1.bn", "model.8.m.0.cv2.bn"]]
    modules = dict(n_model.named_modules())
    for g in a.groups:  # no ghost halves here: every member is one whole BN of the group's width
        assert all(m.offset == 0 and modules[m.bn].num_features == g.channels for m in g.members)


def test_yolov5n_consumers_by_hand(n_model):
    groups = build_groups(n_model)
    g = _by_bn(groups, "model.6.cv3.bn")  # P4 (128 ch) read by layer 7 and, after layer 11's 128, by Concat 12
    assert (g.channels, g.consumers) == (128, [("model.7.conv", 0), ("model.13.cv1.conv", 128),
                                               ("model.13.cv2.conv", 128)])
    g = _by_bn(groups, "model.14.bn")  # first in Concat 16, second (after layer 18's 64) in Concat 19
    assert g.consumers == [("model.17.cv1.conv", 0), ("model.17.cv2.conv", 0),
                           ("model.20.cv1.conv", 64), ("model.20.cv2.conv", 64)]
    g = _by_bn(groups, "model.9.cv1.bn")  # SPPF(256): cv2 reads cat(x, pool, pool2, pool3), 128 each
    assert (g.channels, g.consumers) == (128, [("model.9.cv2.conv", k * 128) for k in range(4)])
    assert _by_bn(groups, "model.13.m.0.cv2.bn").consumers == [("model.13.cv3.conv", 0)]  # cat(m, cv2), 64 each
    assert _by_bn(groups, "model.13.cv2.bn").consumers == [("model.13.cv3.conv", 64)]
    assert _by_bn(groups, "model.17.cv3.bn").consumers == [("model.18.conv", 0), ("model.24.m.0", 0)]
    assert _by_bn(groups, "model.23.cv3.bn").consumers == [("model.24.m.2", 0)]
    assert _by_bn(groups, "model.4.cv1.bn").consumers == [("model.4.cv3.conv", 0), ("model.4.m.0.cv1.conv", 0),
                                                          ("model.4.m.1.cv1.conv", 0)]


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5s-ghost.yaml", "focus_spp", "odd"])
def test_mapping_is_numerically_exact(cfg):
    model = _model({"focus_spp": FOCUS_SPP, "odd": ODD}.get(cfg, cfg))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert _zero_input_channels(model, x) == {}
    groups = build_groups(model)
    assert groups
    for g in groups:
        _assert_mapping(model, g, g.channels - 1, x)


def test_skip_shortcut_removes_exactly_the_residual_groups(n_model):
    everything, skipped = build_groups(n_model), build_groups(n_model, skip_shortcut=True)
    assert skipped == [g for g in everything if not g.residual] and len(skipped) == 50 - 4
    n_bns = sum(isinstance(m, nn.BatchNorm2d) for m in n_model.modules())
    assert len(prunable_bns(n_model)) == n_bns == 57
    kept = prunable_bns(n_model, skip_shortcut=True)
    assert len(kept) == 57 - (2 + 3 + 4 + 2)
    assert "model.2.m.0.cv1.bn" in kept and "model.2.cv1.bn" not in kept and "model.6.m.2.cv2.bn" not in kept
    assert all(isinstance(m, nn.BatchNorm2d) for m in kept.values())


def test_ghost_groups_by_hand():
    model = _model("yolov5s-ghost.yaml")
    a = analyze_groups(model)
    _check_invariants(model, a)
    assert a.unprunable == {}
    # GhostConv: cv1 and its depth-wise cv2 are one group (layers 1 3 5 7 10 14 18 21) + Conv 0 + SPPF's 2.
    # C3Ghost with n GhostBottlenecks: cv2, cv3, n x (first GhostConv) and one residual group: each bottleneck
    # adds its input (cv1's output) onto both halves of its second GhostConv, so cv1 appears at two offsets.
    # C3Ghost always adds, so the head's four (n = 1) are residual too: backbone n = 1, 2, 3, 1.
    assert len(a.groups) == 8 + 1 + 2 + (4 + 5 + 6 + 4) + 4 * 4 == 46
    assert sum(g.residual for g in a.groups) == 8
    g = _by_bn(a.groups, "model.2.cv1.bn")  # C3Ghost(64): cv1 32 = 2 x 16
    assert g.residual and g.channels == 16
    assert [(m.bn, m.offset, m.depthwise) for m in g.members] == [
        ("model.2.cv1.bn", 0, False), ("model.2.cv1.bn", 16, False),
        ("model.2.m.0.conv.2.cv1.bn", 0, False), ("model.2.m.0.conv.2.cv2.bn", 0, True)]
    g = _by_bn(a.groups, "model.1.cv1.bn")  # GhostConv(64) output cat(y, dw(y)): layer 2 reads it twice
    assert g.bns == ["model.1.cv1.bn", "model.1.cv2.bn"] and g.channels == 32
    assert g.consumers == [("model.2.cv1.conv", 0), ("model.2.cv1.conv", 32),
                           ("model.2.cv2.conv", 0), ("model.2.cv2.conv", 32)]


def test_focus_spp_groups_by_hand():
    model = _model(FOCUS_SPP)
    a = analyze_groups(model)
    _check_invariants(model, a)
    assert a.unprunable == {}
    # Focus, Conv 1 3 4 9 12 (6) + C3 2 (shortcut, n=1: 4) + SPP (2) + head C3 8 and 11 (5 each)
    assert len(a.groups) == 6 + 4 + 2 + 10 and sum(g.residual for g in a.groups) == 1
    assert _by_bn(a.groups, "model.0.conv.bn").consumers == [("model.1.conv", 0)]
    g = _by_bn(a.groups, "model.5.cv1.bn")  # SPP(128): cv2 reads cat(x, 3 pools), 64 each
    assert g.consumers == [("model.5.cv2.conv", k * 64) for k in range(4)]


def test_odd_widths_by_hand():
    model = _model(ODD)
    a = analyze_groups(model)
    _check_invariants(model, a)
    assert a.unprunable == {}
    # 0; 1 + 2.cv2 (residual); 2.cv1; C3 3 (residual cv1 + m.0.cv2, m.0.cv1, cv2, cv3); 4 + depth-wise 5;
    # SPPF 6 (2); C3 9 without shortcut (5)
    assert len(a.groups) == 1 + 1 + 1 + 4 + 1 + 2 + 5 and sum(g.residual for g in a.groups) == 2
    assert _by_bn(a.groups, "model.1.bn").bns == ["model.1.bn", "model.2.cv2.bn"]
    g = _by_bn(a.groups, "model.4.bn")
    assert g.bns == ["model.4.bn", "model.5.bn"] and not g.residual and g.channels == 56
    assert [m.depthwise for m in g.members] == [False, True] and g.consumers == [("model.6.cv1.conv", 0)]
    assert _by_bn(a.groups, "model.3.cv3.bn").consumers == [("model.4.conv", 0), ("model.9.cv1.conv", 56),
                                                            ("model.9.cv2.conv", 56)]
    assert _by_bn(a.groups, "model.9.cv1.bn").channels == 9


def test_unprunable_modules_are_recorded_with_reasons(n_model):
    d = copy.deepcopy(ODD)
    d["backbone"][5] = [-1, 1, "DWConv", [40, 3, 1]]  # 56 -> 40: groups = gcd = 8, neither dense nor depth-wise
    model = _model(d)
    a = analyze_groups(model)
    _check_invariants(model, a)
    assert set(a.unprunable) == {"model.4.bn", "model.5.bn"} and "groups=8" in a.unprunable["model.4.bn"]
    assert len(a.groups) == 15 - 1

    class Upsample2x(nn.Upsample):  # a type without a rule, even though it subclasses one
        pass

    model = copy.deepcopy(n_model)
    old = model.model[11]
    new = Upsample2x(scale_factor=2, mode="nearest")
    new.f, new.i, new.type, new.np = old.f, old.i, "Upsample2x", 0
    model.model[11] = new
    a = analyze_groups(model)
    _check_invariants(model, a)
    assert list(a.unprunable) == ["model.10.bn"] and "model.11: no channel rule for Upsample2x" in a.unprunable[
        "model.10.bn"]
    assert len(a.groups) == 49
    assert _by_bn(a.groups, "model.6.cv3.bn").consumers[1:] == [("model.13.cv1.conv", 128), ("model.13.cv2.conv", 128)]

    fused = copy.deepcopy(n_model).fuse()  # no BN left: nothing to judge channels by
    assert analyze_groups(fused).groups == [] and safe_prune_percent(fused, []) == 0.0


def test_scores_and_safe_prune_percent_by_hand(n_model):
    model = copy.deepcopy(n_model)
    groups = build_groups(model)
    modules = dict(model.named_modules())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1.0)
    # group A (layer 0, 16 ch): 0.015 ... 0.165; residual group R (layer 2 cv1 + m.0.cv2, 16 ch): 0.02 and 0.2
    modules["model.0.bn"].weight.data.copy_(torch.arange(1, 17) / 100 + 0.005)
    modules["model.2.cv1.bn"].weight.data.fill_(0.02)
    modules["model.2.m.0.cv2.bn"].weight.data.fill_(-0.2)  # |gamma|
    a, r = _by_bn(groups, "model.0.bn"), _by_bn(groups, "model.2.cv1.bn")
    assert r.residual and r.channels == 16
    total = sum(g.channels for g in groups)
    scores = dict(zip(map(id, groups), group_scores(model, groups, "max")))
    assert torch.allclose(scores[id(r)], torch.full((16,), 0.2))
    means = dict(zip(map(id, groups), group_scores(model, groups, "mean")))
    assert torch.allclose(means[id(r)], torch.full((16,), 0.11))
    # max: the smallest group maximum is A's 0.165; A's other 15 channels score below it
    assert safe_prune_percent(model, groups) == pytest.approx(15 / total)
    # mean: R scores 0.11 everywhere, now the smallest maximum; A's 0.015 ... 0.105 (10 channels) are below
    assert safe_prune_percent(model, groups, "mean") == pytest.approx(10 / total)

    all_scores = group_scores(model, groups)
    p = safe_prune_percent(model, groups)
    t = global_threshold(all_scores, p)
    assert t == pytest.approx(0.165) and all((s >= t).any() for s in all_scores)
    t = global_threshold(all_scores, p + 1 / total)  # one more channel: A would be emptied
    assert t == pytest.approx(0.2) and not (all_scores[groups.index(a)] >= t).any()
    assert math.isclose(global_threshold(all_scores, 0.0), 0.015, rel_tol=1e-6)
    with pytest.raises(ValueError, match="reduce"):
        group_scores(model, groups, "sum")
