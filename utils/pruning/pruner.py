"""From settings to a pruned model: `prune_model(model, PruneSettings(...), data, method="slim")` is what prune.py runs.

The method (an object from utils.pruning.methods, or its --method name) decides the cut: channel methods go through
groups -> importance -> selection -> surgery -> explicit-width yaml; layer removes residual bottlenecks, unstructured
zeroes weights and keeps the shapes. Methods that learn from data (eagleeye, taylor, sensitivity, tp-taylor,
--adaptive-bn) take a SearchData built from the training split.
"""

from __future__ import annotations

import torch.nn as nn

from utils.pruning.data import SearchData
from utils.pruning.methods import METHODS, Method, PruneResult, PruneSettings, create
from utils.torch_utils import recalibrate_bn

__all__ = ["METHODS", "PruneResult", "PruneSettings", "SearchData", "prune_model"]


def prune_model(model: nn.Module, settings: PruneSettings | None = None, data: SearchData | None = None,
                method: Method | str = "slim") -> PruneResult:
    """A pruned copy of `model` (a float DetectionModel with BatchNorms) and what was decided on the way.

    `method` is a Method or a registered name (its options at their defaults). ValueError (one line) for settings the
    method cannot honour or data it lacks."""
    method = create(method) if isinstance(method, str) else method
    settings = settings or PruneSettings()
    settings.check(method)
    data = data or SearchData()
    if settings.adaptive_bn:
        data.need("--adaptive-bn", "batches")
    result = method.prune(model.float().eval(), settings, data)
    if settings.adaptive_bn and not method.recalibrates:
        recalibrate_bn(result.model, data.images)  # eagleeye and sensitivity already did
    return result
