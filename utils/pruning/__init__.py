"""Structured pruning, layered as graph (channel flow) -> groups (what goes together) -> importance -> surgery."""

from utils.pruning.graph import (
    ChannelFlow,
    analyze_groups,
    build_groups,
    prunable_bns,
    trace_channels,
)
from utils.pruning.groups import (
    ChannelGroup,
    GroupAnalysis,
    Member,
    global_threshold,
    group_scores,
    safe_prune_percent,
    select_channels,
)

__all__ = [
    "ChannelFlow", "ChannelGroup", "GroupAnalysis", "Member", "analyze_groups", "build_groups", "global_threshold",
    "group_scores", "prunable_bns", "safe_prune_percent", "select_channels", "trace_channels",
]
