"""First-order Taylor importance (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019).

Removing a BN channel changes the loss by about -(gamma * dL/dgamma + beta * dL/dbeta): the first-order Taylor term
of setting its scale and shift to zero. A group channel is removed from every member BN at once, so its estimate is
the sum of the members' terms; the importance is the magnitude of that sum, averaged over batches (the paper squares
it; a magnitude keeps the scores on the loss's own scale and ranks the same within a batch). No sparse training is
needed: the gradients of a normally trained model say which channels the loss leans on.

The gradients are taken with the model in eval mode (BN normalises with its running statistics, which stay
untouched): the importance of a channel of the network as it will run. Our surgery folds a removed channel's constant
act(beta) into its consumers, so the beta term estimates a little more than pruning costs here; it is kept because it
is the criterion as published and scores channels whose shift carries the signal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

from utils.pruning.graph import ChannelGroup

Batch = tuple[torch.Tensor, torch.Tensor]  # images (float, 0..1) and targets (image, class, x, y, w, h)


def taylor_scores(model: nn.Module, groups: list[ChannelGroup], batches: Iterable[Batch],
                  loss_fn: Callable[[object, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Per group, each channel's |sum over members of gamma*dL/dgamma + beta*dL/dbeta| averaged over `batches`.

    `loss_fn(model_output, targets)` returns the scalar loss of one batch. Parameter gradients and requires_grad are
    restored afterwards; the model's weights and BN statistics do not change."""
    modules = dict(model.named_modules())
    bns = {name: modules[name] for g in groups for name in g.bns}
    params = [p for b in bns.values() for p in (b.weight, b.bias)]
    totals = [torch.zeros(g.channels) for g in groups]
    n = 0
    for grads in loss_grads(model, params, batches, loss_fn):
        grads = dict(zip(params, grads))
        per_bn = {name: (b.weight * grads[b.weight] + b.bias * grads[b.bias]).detach().float().cpu()
                  for name, b in bns.items()}
        for k, g in enumerate(groups):
            s = torch.zeros(g.channels)
            for m in g.members:
                s += per_bn[m.bn][m.offset:m.offset + g.channels]
            totals[k] += s.abs()
        n += 1
    return [t / n for t in totals]


def loss_grads(model: nn.Module, params: list[torch.Tensor], batches: Iterable[Batch],
               loss_fn: Callable[[object, torch.Tensor], torch.Tensor]) -> Iterator[tuple[torch.Tensor, ...]]:
    """The gradients of `params` for each batch's loss, the model in eval mode with only `params` requiring grad;
    mode, requires_grad and .grad of every parameter are restored afterwards. ValueError when there is no batch."""
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    was_training = model.training
    n = 0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for imgs, targets in tqdm(list(batches), desc="taylor: batches", bar_format="{l_bar}{bar:10}{r_bar}"):
            yield torch.autograd.grad(loss_fn(model(imgs), targets), params)
            n += 1
    finally:
        for p, req, grad in saved:
            p.requires_grad_(req)
            p.grad = grad
        model.train(was_training)
    if n == 0:
        raise ValueError("taylor importance needs at least one batch")


def weight_taylor_scores(model: nn.Module, groups: list[ChannelGroup], batches: Iterable[Batch],
                         loss_fn: Callable[[object, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Per group, the Taylor importance over every parameter a channel owns (`prune.py --taylor-score weights`).

    The loss gradients are summed over `batches` first; then each coupled layer scores a channel by sum |p * grad|
    over its entries of that channel: a member's conv output kernel, its BN gamma and beta, a consumer conv's input
    kernel (not depth-wise consumers, whose kernel is the member's own). A group's score is the mean over those
    layers, divided by the group's mean score, so groups of different depth rank on one scale. This is the scoring
    Torch-Pruning's GroupTaylorImportance uses with its defaults; taylor_scores (the default) uses the BN terms only.
    Model, gradients and requires_grad are left as they were."""
    modules = dict(model.named_modules())

    def owned(g: ChannelGroup) -> list[tuple[torch.Tensor, int, int]]:  # (parameter, channel dim, offset)
        out = []
        for m in g.members:
            bn = modules[m.bn]
            out += [(modules[m.conv].weight, 0, m.offset), (bn.weight, 0, m.offset), (bn.bias, 0, m.offset)]
        for c, off in g.consumers:
            w = modules[c].weight
            if w.shape[1] > 1:
                out.append((w, 1, off))
        return out

    per_group = [owned(g) for g in groups]
    params = list({id(p): p for entries in per_group for p, _, _ in entries}.values())
    summed = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    for grads in loss_grads(model, params, batches, loss_fn):
        for p, gr in zip(params, grads):
            summed[id(p)] += gr.float()
    scores = []
    for g, entries in zip(groups, per_group):
        layers = []
        for p, dim, off in entries:
            imp = (p.detach().float() * summed[id(p)]).abs().narrow(dim, off, g.channels)
            layers.append(imp.transpose(0, dim).reshape(g.channels, -1).sum(1))
        s = torch.stack(layers).mean(0)
        scores.append(s / s.mean().clamp_min(1e-12))
    return scores
