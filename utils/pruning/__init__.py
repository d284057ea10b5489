"""Structured pruning, layered as graph (channel flow, groups) -> groups (scores) -> importance -> selection ->
surgery -> yaml; prune methods are objects in utils.pruning.methods (METHODS), driven by pruner.prune_model."""

from utils.pruning.graph import (
    ChannelFlow,
    ChannelGroup,
    GroupAnalysis,
    Member,
    analyze_groups,
    build_groups,
    prunable_bns,
    trace_channels,
)
from utils.pruning.groups import global_threshold, group_scores, safe_prune_percent
from utils.pruning.selection import select_channels

__all__ = [
    "ChannelFlow", "ChannelGroup", "GroupAnalysis", "Member", "analyze_groups", "build_groups", "global_threshold",
    "group_scores", "prunable_bns", "safe_prune_percent", "select_channels", "trace_channels",
]
