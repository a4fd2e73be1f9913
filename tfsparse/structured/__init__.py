"""Structured pruning: remove whole channels, filters, neurons and heads, for a smaller, faster model.

`DependencyGraph(model)` finds the groups of coupled channels; `plan` decides which go (a JSON-able
`Plan`); `apply` rebuilds a smaller ordinary Keras model; `prune` does both.

Example:

```python
from tfsparse import structured

print(structured.DependencyGraph(model))             # the groups of coupled channels
p = structured.plan(model, ratio=0.5, importance="l1", round_to=8)
open("plan.json", "w").write(p.to_json())           # review it, apply it again later
small = structured.apply(model, structured.Plan.from_json(open("plan.json").read()))
```
"""

from tfsparse.structured import importance, merging, redundancy, rules, surgery
from tfsparse.structured.blocks import (
    BlockPlan,
    ResidualBlock,
    apply_blocks,
    plan_blocks,
    prune_blocks,
    residual_blocks,
)
from tfsparse.structured.context import RuleContext
from tfsparse.structured.graph import DependencyGraph, Group, Member, register_rule
from tfsparse.structured.importance import group_scores
from tfsparse.structured.plan import Plan, plan
from tfsparse.structured.pruning import apply, prune
from tfsparse.structured.speed import SpeedupReport, check_speedup
from tfsparse.structured.training import ChannelGroupLasso, UpdateChannelMasks, finalize, prune_gradually

__all__ = [
    "BlockPlan",
    "ChannelGroupLasso",
    "DependencyGraph",
    "Group",
    "Member",
    "Plan",
    "ResidualBlock",
    "SpeedupReport",
    "UpdateChannelMasks",
    "RuleContext",
    "apply",
    "apply_blocks",
    "check_speedup",
    "finalize",
    "group_scores",
    "importance",
    "merging",
    "plan",
    "plan_blocks",
    "prune",
    "prune_blocks",
    "prune_gradually",
    "redundancy",
    "register_rule",
    "residual_blocks",
    "rules",
    "surgery",
]
