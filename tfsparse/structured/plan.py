"""A structured pruning plan: which channels of which group go, and why; plain JSON data.

`plan(model, ratio, ...)` decides; `apply(model, plan)` carries it out. A plan can be printed, saved,
reviewed and applied again: the same plan on the same model gives the same model.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np

from tfsparse.structured import importance as importance_module
from tfsparse.structured.graph import DependencyGraph

_VERSION = 1


class Plan:
    """Channels to remove, per group of a model's `DependencyGraph`.

    Args:
        removed: `{group index: [channel indices]}`.
        reasons: `{group index: why}` (optional; one line each).
        ignored_layers: the `ignored_layers` the graph was built with (the group indices depend on them).
        groups: `{group index: {"channels": n, "layers": [...]}}` of the model the plan was made for,
            checked by `apply` (optional).

    Example:

    ```python
    p = Plan({3: [0, 5]})
    text = p.to_json()
    assert Plan.from_json(text).removed == {3: [0, 5]}
    ```
    """

    def __init__(
        self, removed: dict, reasons: dict | None = None, ignored_layers=(), groups: dict | None = None
    ):
        if not isinstance(removed, dict):
            raise ValueError(
                f"Argument `removed` must be a dict {{group index: [channels]}}. Received: removed={removed!r}"
            )
        self.removed = {
            int(g): sorted(int(c) for c in channels)
            for g, channels in sorted(removed.items(), key=lambda i: int(i[0]))
        }
        self.reasons = {int(g): str(r) for g, r in (reasons or {}).items()}
        self.ignored_layers = [str(name) for name in ignored_layers]
        self.groups = {int(g): dict(info) for g, info in (groups or {}).items()}

    @property
    def channels_removed(self) -> int:
        """How many group channels the plan removes in all."""
        return sum(len(channels) for channels in self.removed.values())

    def to_dict(self) -> dict:
        """The plan as JSON-able data."""
        return {
            "version": _VERSION,
            "removed": {str(g): c for g, c in self.removed.items()},
            "reasons": {str(g): r for g, r in self.reasons.items()},
            "ignored_layers": list(self.ignored_layers),
            "groups": {str(g): info for g, info in self.groups.items()},
        }

    def to_json(self, indent: int | None = 1) -> str:
        """The plan as JSON text (`Plan.from_json` reads it back)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """The plan of `to_dict`."""
        if not isinstance(data, dict) or "removed" not in data:
            raise ValueError(
                f"A structured plan is a dict with a 'removed' entry. Received: {str(data)[:80]!r}"
            )
        if data.get("version", _VERSION) != _VERSION:
            raise ValueError(
                f"Structured plan version {data.get('version')} is not supported (expected {_VERSION})."
            )
        return cls(data["removed"], data.get("reasons"), data.get("ignored_layers", ()), data.get("groups"))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """The plan written by `to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Argument `text` is not JSON ({error}). Pass the text of `Plan.to_json()`."
            ) from None
        return cls.from_dict(data)

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __str__(self) -> str:
        lines = [f"Plan: {self.channels_removed} channels removed from {len(self.removed)} groups"]
        for g in sorted(set(self.removed) | set(self.reasons)):
            count = len(self.removed.get(g, ()))
            lines.append(f"  group {g:>3}: -{count:<5} {self.reasons.get(g, '')}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Plan: {self.channels_removed} channels from {len(self.removed)} groups>"


def _check_arguments(ratio, scope, round_to, max_ratio) -> None:
    if isinstance(ratio, dict):
        for name, value in ratio.items():
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(
                    f"Argument `ratio` for layer '{name}' must be in [0, 1). Received: {value!r}"
                )
    elif not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
        raise ValueError(
            f"Argument `ratio` must be a float in [0, 1) or a dict {{layer name: ratio}}. Received: ratio={ratio!r}"
        )
    if scope not in ("layer", "global"):
        raise ValueError(f"Argument `scope` must be 'layer' or 'global'. Received: scope={scope!r}")
    if scope == "global" and isinstance(ratio, dict):
        raise ValueError("Argument `ratio` must be one float with scope='global'. Received a dict of ratios.")
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise ValueError(f"Argument `round_to` must be a positive integer. Received: round_to={round_to!r}")
    if not isinstance(max_ratio, (int, float)) or not 0 < max_ratio < 1:
        raise ValueError(f"Argument `max_ratio` must be in (0, 1). Received: max_ratio={max_ratio!r}")


def _group_ratio(group, ratio) -> float:
    if not isinstance(ratio, dict):
        return float(ratio)
    # The most cautious ratio among the layers that produce the group's channels.
    named = [ratio[name] for name in group.layers() if name in ratio]
    return float(min(named)) if named else 0.0


def _rounded_removal(group, wanted: int, round_to: int, max_ratio: float) -> int:
    """How many channels to remove: at most max_ratio of them, at least one kept, kept count a multiple of round_to."""
    candidates = int((~group.fixed).sum())
    limit = min(candidates, int(math.floor(max_ratio * group.channels)), group.channels - 1)
    count = max(0, min(wanted, limit))
    if round_to > 1 and count:
        kept = group.channels - count
        rounded = max(round_to, int(round(kept / round_to)) * round_to)
        count = group.channels - rounded
        while count > limit:
            count -= round_to
        count = max(count, 0)
    return count


_PRODUCERS = ("out", "heads", "key_dim", "value_dim")


def _lowest(group, scores: np.ndarray, count: int, max_ratio: float) -> list[int]:
    """The `count` lowest-scored removable channels, skipping any whose removal would take a producing
    layer past `max_ratio` of its own channels (a concatenated branch never disappears)."""
    producers = [m.channels for m in group.members if m.kind in _PRODUCERS]
    limits = [min(int(math.floor(max_ratio * len(c))), len(c) - 1) for c in producers]
    taken = [0] * len(producers)
    uses = {}
    for i, channels in enumerate(producers):
        found, counts = np.unique(channels[channels >= 0], return_counts=True)
        for channel, n in zip(found.tolist(), counts.tolist()):
            uses.setdefault(channel, []).append((i, n))
    chosen = []
    for channel in np.argsort(np.where(group.fixed, np.inf, scores), kind="stable").tolist():
        if len(chosen) >= count or group.fixed[channel]:
            break
        needs = uses.get(channel, [])
        if all(taken[i] + n <= limits[i] for i, n in needs):
            for i, n in needs:
                taken[i] += n
            chosen.append(channel)
    return sorted(chosen)


def plan(
    model: keras.Model,
    ratio=0.5,
    importance="l2",
    scope: str = "layer",
    ignored_layers=(),
    round_to: int = 1,
    max_ratio: float = 0.9,
    data=None,
    loss=None,
) -> Plan:
    """Decides which channels structured pruning removes, without changing anything.

    Args:
        model: a Sequential or functional model.
        ratio: share of each group's channels to remove, or `{layer name: ratio}` (a group takes the
            smallest ratio among its member layers listed; unlisted groups stay whole).
        importance: "l1", "l2", "bn_scale", "taylor", "lamp", "random", or `fn(model, group) -> scores`.
        scope: "layer" (each group loses `ratio` of its channels) or "global" (channels of all
            groups ranked together, scores divided by their group's mean unless "lamp").
        ignored_layers: layer names whose own channels stay whole (see `DependencyGraph`); also the
            way past Lambda and custom layers without a rule.
        round_to: keep channel counts at multiples of this (8 suits most accelerators).
        max_ratio: no group loses more than this share of its channels.
        data: `(x, y)` for "taylor".
        loss: the loss for "taylor" (defaults to the compiled loss).

    Returns:
        A `Plan`.

    Example:

    ```python
    p = plan(model, ratio=0.5, importance="l1", round_to=8)
    print(p)
    small = apply(model, p)
    ```
    """
    _check_arguments(ratio, scope, round_to, max_ratio)
    importance_module.check_importance(importance)
    graph = DependencyGraph(model, ignored_layers=ignored_layers)
    return plan_for_graph(model, graph, ratio, importance, scope, round_to, max_ratio, data, loss)


def plan_for_graph(
    model, graph, ratio=0.5, importance="l2", scope="layer", round_to=1, max_ratio=0.9, data=None, loss=None
) -> Plan:
    """`plan` for an already built `DependencyGraph` of `model`.

    Args:
        model: the model.
        graph: `DependencyGraph(model, ignored_layers=...)`.
        ratio, importance, scope, round_to, max_ratio, data, loss: as in `plan`.

    Returns:
        A `Plan`.

    Example:

    ```python
    graph = DependencyGraph(model)
    p = plan_for_graph(model, graph, ratio=0.3)
    ```
    """
    _check_arguments(ratio, scope, round_to, max_ratio)
    if isinstance(ratio, dict):
        unknown = sorted(set(ratio) - set(graph.layers))
        if unknown:
            raise ValueError(
                f"Argument `ratio` names layers that are not in model '{graph.model.name}': {unknown}. "
                "Use layer names ('model/layer' inside nested models)."
            )
    scores = importance_module.group_scores(model, graph, importance, data=data, loss=loss)
    name = importance if isinstance(importance, str) else getattr(importance, "__name__", "callable")
    removed, reasons, counts = {}, {}, {}
    for group in graph.groups:
        if not group.prunable:
            reasons[group.index] = "fixed: tied to a model input or output, or kept whole"
            continue
        if group.index not in scores:
            reasons[group.index] = f"kept: no score ({name} needs a normalization layer in the group)"
            continue
        if scope == "layer":
            r = _group_ratio(group, ratio)
            counts[group.index] = _rounded_removal(group, int(round(r * group.channels)), round_to, max_ratio)
    if scope == "global":
        counts = _global_counts(graph, scores, float(ratio), importance, round_to, max_ratio)
    for group in graph.groups:
        count = counts.get(group.index)
        if count is None:
            continue
        if count == 0:
            reasons[group.index] = "kept: ratio rounds to no channel"
            continue
        chosen = _lowest(group, scores[group.index], count, max_ratio)
        if not chosen:
            reasons[group.index] = "kept: every channel's removal would empty a layer past max_ratio"
            continue
        removed[group.index] = chosen
        count = len(chosen)
        share = count / group.channels
        reasons[group.index] = f"{name}: lowest {count} of {group.channels} channels ({share:.0%})"
    groups = {
        g: {"channels": graph.groups[g].channels, "layers": graph.groups[g].layers()[:4]} for g in removed
    }
    return Plan(removed, reasons, graph.ignored_layers, groups)


def _global_counts(graph, scores, ratio, importance, round_to, max_ratio) -> dict:
    entries = []
    total = 0
    for g, values in scores.items():
        group = graph.groups[g]
        total += group.channels
        normalized = values if importance == "lamp" else values / max(float(np.mean(values)), 1e-12)
        for channel in np.flatnonzero(~group.fixed):
            entries.append((float(normalized[channel]), g, int(channel)))
    entries.sort()
    target = int(round(ratio * total))
    counts = dict.fromkeys(scores, 0)
    limits = {g: _rounded_removal(graph.groups[g], graph.groups[g].channels, 1, max_ratio) for g in scores}
    taken = 0
    for _, g, _ in entries:
        if taken >= target:
            break
        if counts[g] < limits[g]:
            counts[g] += 1
            taken += 1
    return {g: _rounded_removal(graph.groups[g], c, round_to, max_ratio) for g, c in counts.items()}
