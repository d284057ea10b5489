"""Prune methods as objects, by --method name: `METHODS` maps each name to its class (methods/base.py's `Method`).

Adding a method is one file in this package, whose class is decorated with `@register`, and its module in the import
line below (the order --help lists them in). Channel methods subclass `ChannelMethod` (groups, scores, a selection)
or `Ranked` (only scores: one global ranking cut at --percent, so --percent auto works); others implement `prune`.
"""

from utils.pruning.methods.base import METHODS, Method, PruneResult, PruneSettings, create, register
from utils.pruning.methods.channels import ChannelMethod, Cut, Ranked
from utils.pruning.methods import slim, l1, taylor, eagleeye, sensitivity, layer, unstructured, tp  # noqa: F401, E402

__all__ = ["METHODS", "ChannelMethod", "Cut", "Method", "PruneResult", "PruneSettings", "Ranked", "create",
           "register"]
