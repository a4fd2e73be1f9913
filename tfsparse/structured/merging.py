"""Importances "lsh" and "fpgm" on a model's channel groups, and merging removed channels into duplicates.

Each channel of a group is described by the weights that make it (the producing layers' kernels
and biases, normalization and depthwise parameters). "fpgm" scores those vectors by their distance
to the group's geometric median, "lsh" by how near a SimHash near-duplicate they have
(`tfsparse.structured.redundancy`). A plan made with "lsh" records, per group, the channel each
removed one merges into (`"merged_into"` in `plan.groups`, aligned with `plan.removed`); `apply`
folds each removed channel's outgoing weights (the layers that read it) into that channel's before
slicing, so the next layers see almost the same input.
"""

from __future__ import annotations

import numpy as np

from tfsparse.structured import redundancy

# Member kinds whose weights make a channel (its vector), and the kind whose weights read it.
PRODUCING_KINDS = ("out", "norm", "depthwise")
READING_KIND = "in"
# Channels of these kinds are not plain feature maps (attention heads and their dimensions):
# a duplicate there cannot be folded into a reading layer's weights.
_UNMERGEABLE_KINDS = ("heads", "key_dim", "value_dim")


def _weight_values(model, graph) -> dict:
    """`{(layer path, weight name): numpy value}` for every sliced weight of the graph."""
    from tfsparse.structured.surgery import layer_weights

    weights = layer_weights(model)
    return {
        (path, s.name): weights[path][s.index]
        for path, record in graph.layers.items()
        if path in weights
        for s in record.slices
    }


def _per_channel(value: np.ndarray, axis: int, channels: np.ndarray, count: int) -> np.ndarray | None:
    """`(count, features)`: the slices of `value` along `axis` at each channel's positions."""
    rows = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    positions = [np.flatnonzero(channels == c) for c in range(count)]
    if len({p.size for p in positions}) != 1:
        return None  # channels with unequal shares of the axis: no common vector layout
    return np.stack([rows[p].ravel() for p in positions])


def channel_vectors(model, graph, group, trainable_only: bool = False) -> np.ndarray:
    """`(group.channels, features)`: for each channel of `group`, the weights that make it, flattened.

    Args:
        model: the model the graph was built from.
        graph: its `DependencyGraph`.
        group: one of `graph.groups`.
        trainable_only: leave out non-trainable weights (normalization statistics).

    Returns:
        The vectors, float64; zero-width when no producing layer has weights.

    Example:

    ```python
    graph = structured.DependencyGraph(model)
    vectors = channel_vectors(model, graph, graph.groups[1])
    ```
    """
    values = _weight_values(model, graph)
    trainable = {(path, s.name): s.trainable for path, r in graph.layers.items() for s in r.slices}
    parts = []
    for member in group.members:
        if member.kind not in PRODUCING_KINDS:
            continue
        for name, axis, channels in member.weights:
            key = (member.layer, name)
            if key not in values or (trainable_only and not trainable.get(key, True)):
                continue
            part = _per_channel(np.asarray(values[key], dtype=np.float64), axis, channels, group.channels)
            if part is not None:
                parts.append(part)
    return np.concatenate(parts, axis=1) if parts else np.zeros((group.channels, 0))


def group_scores(model, graph, groups, importance: str) -> dict:
    """`{group index: scores}` for importance "fpgm" or "lsh" (higher means keep).

    Groups whose channels no producing layer makes (no weights) are left out, and for "lsh" also
    groups of attention heads, whose duplicates cannot be merged.

    Example:

    ```python
    scores = group_scores(model, graph, [g for g in graph.groups if g.prunable], "fpgm")
    ```
    """
    scores = {}
    for group in groups:
        if importance == "lsh" and any(m.kind in _UNMERGEABLE_KINDS for m in group.members):
            continue
        vectors = channel_vectors(model, graph, group, trainable_only=importance == "fpgm")
        if vectors.shape[1] == 0:
            continue
        if importance == "fpgm":
            scores[group.index] = redundancy.fpgm_scores(vectors)
        else:
            scores[group.index] = redundancy.duplicate_scores(vectors, fixed=group.fixed)
    return scores


def record_merges(model, graph, removed: dict, groups: dict) -> None:
    """Writes `"merged_into"` (the target of each removed channel, in `removed` order) into `groups`.

    Args:
        model: the model the plan is made for.
        graph: its `DependencyGraph`.
        removed: `{group index: [channels]}` of the plan.
        groups: the plan's `{group index: info dict}`, completed in place.
    """
    for g, channels in removed.items():
        vectors = channel_vectors(model, graph, graph.groups[g])
        targets = redundancy.merge_targets(vectors, sorted(channels))
        groups.setdefault(g, {})["merged_into"] = [targets[c] for c in sorted(channels)]


def fold_merges(graph, plan, weights: dict) -> dict:
    """`weights` (`{layer path: [arrays]}`) with each merged channel's outgoing weights folded in.

    For every group whose plan entry has `"merged_into"`, each layer reading the group's channels
    gets the slice of every removed channel added to the slice of the channel it merges into
    (position by position where a channel spans several, as after a flatten). The removed
    slices are then cut out by `apply` as usual.

    Example:

    ```python
    weights = fold_merges(graph, plan, surgery.layer_weights(model))
    ```
    """
    weights = dict(weights)
    for g, channels in plan.removed.items():
        targets = plan.groups.get(g, {}).get("merged_into")
        if not targets:
            continue
        merges = dict(zip(sorted(channels), (int(t) for t in targets)))
        for member in graph.groups[g].members:
            if member.kind != READING_KIND or member.layer not in weights:
                continue
            values = list(weights[member.layer])
            index_of = {s.name: s.index for s in graph.layers[member.layer].slices}
            for name, axis, positions_channel in member.weights:
                position_merges = {}
                for removed_channel, target in merges.items():
                    sources = np.flatnonzero(positions_channel == removed_channel)
                    destinations = np.flatnonzero(positions_channel == target)
                    position_merges.update(zip(sources.tolist(), destinations.tolist()))
                index = index_of[name]
                values[index] = redundancy.merge_outgoing(values[index], axis, position_merges)
            weights[member.layer] = values
    return weights
