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

from collections.abc import Callable, Iterable

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
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    was_training = model.training
    totals = [torch.zeros(g.channels) for g in groups]
    n = 0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for imgs, targets in tqdm(list(batches), desc="taylor: batches", bar_format="{l_bar}{bar:10}{r_bar}"):
            loss = loss_fn(model(imgs), targets)
            grads = dict(zip(params, torch.autograd.grad(loss, params)))
            per_bn = {name: (b.weight * grads[b.weight] + b.bias * grads[b.bias]).detach().float().cpu()
                      for name, b in bns.items()}
            for k, g in enumerate(groups):
                s = torch.zeros(g.channels)
                for m in g.members:
                    s += per_bn[m.bn][m.offset:m.offset + g.channels]
                totals[k] += s.abs()
            n += 1
    finally:
        for p, req, grad in saved:
            p.requires_grad_(req)
            p.grad = grad
        model.train(was_training)
    if n == 0:
        raise ValueError("taylor importance needs at least one batch")
    return [t / n for t in totals]
