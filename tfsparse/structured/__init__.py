"""Structured pruning: remove whole channels, filters, neurons and heads, for a smaller, faster model.

`DependencyGraph(model)` finds the groups of coupled channels; `plan` decides which go (a JSON-able
`Plan`); `apply` rebuilds a smaller ordinary Keras model; `prune` does both.
"""

from tfsparse.structured import importance, rules, surgery
from tfsparse.structured.graph import DependencyGraph, Group, Member, register_rule
from tfsparse.structured.importance import group_scores
from tfsparse.structured.plan import Plan, plan
from tfsparse.structured.pruning import apply, prune

__all__ = [
    "DependencyGraph",
    "Group",
    "Member",
    "Plan",
    "apply",
    "group_scores",
    "importance",
    "plan",
    "prune",
    "register_rule",
    "rules",
    "surgery",
]
