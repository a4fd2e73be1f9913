"""How much each channel of each group matters: one score per channel, higher is more important."""

from __future__ import annotations

import keras
import numpy as np

from tfsparse import criteria

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "lamp", "random")


def check_importance(importance) -> None:
    """A `ValueError` unless `importance` is one of `IMPORTANCES` or a callable.

    Args:
        importance: the value to check.

    Returns:
        None.

    Example:

    ```python
    check_importance("l1")
    ```
    """
    if not callable(importance) and importance not in IMPORTANCES:
        raise ValueError(
            f"Argument `importance` must be one of {list(IMPORTANCES)} or a callable "
            f"`fn(model, group) -> scores`. Received: importance={importance!r}"
        )


def _weight_variables(model: keras.Model, graph) -> dict:
    """`{(layer path, weight name): variable}` for the sliced weights of the graph."""
    from tfsparse.structured.surgery import leaf_layers

    layers = leaf_layers(model)
    found = {}
    for path, record in graph.layers.items():
        layer = layers.get(path)
        if layer is None:
            continue
        for s in record.slices:
            found[(path, s.index)] = layer.weights[s.index]
    return found


def _accumulate(graph, groups, values_of, reduce, include) -> dict:
    """Per group, `reduce(weight slice)` summed per channel over each weight axis in the group."""
    totals = {g.index: np.zeros(g.channels, dtype=np.float64) for g in groups}
    for path, record in graph.layers.items():
        for s in record.slices:
            if not include(record, s):
                continue
            owners, channels = graph._positions(s.atoms)
            wanted = [g for g in dict.fromkeys(owners.tolist()) if g in totals]
            if not wanted:
                continue
            value = values_of(path, s.index)
            if value is None:
                continue
            moved = np.moveaxis(value.astype(np.float64), s.axis, 0).reshape(value.shape[s.axis], -1)
            per_position = reduce(moved)
            for g in wanted:
                inside = owners == g
                np.add.at(totals[g], channels[inside], per_position[inside])
    return totals


def _norm_layer_gamma(record, s) -> bool:
    return s.name == "gamma" and any(space.kind == "norm" for space in record.spaces.values())


def group_scores(model: keras.Model, graph, importance="l2", data=None, loss=None) -> dict:
    """One score per channel for each prunable group of `graph`; higher means keep.

    Args:
        model: the model the graph was built from.
        graph: its `DependencyGraph`.
        importance: "l1" or "l2" (norms over all of the group's trainable weights), "bn_scale"
            (|gamma| of the group's normalization layers; groups without one are left out), "taylor"
            (|w * dL/dw| on `data`, summed over the group's weights), "lamp" (LAMP-normalized l2
            scores, comparable across groups), "random" (seeded), or a callable
            `fn(model, group) -> array of group.channels scores`.
        data: `(x, y)` arrays or batches, for "taylor".
        loss: the loss for "taylor"; defaults to the model's compiled loss.

    Returns:
        `{group index: float64 array of group.channels scores}`.

    Example:

    ```python
    scores = group_scores(model, DependencyGraph(model), "l1")
    ```
    """
    check_importance(importance)
    prunable = [g for g in graph.groups if g.prunable]
    if callable(importance):
        scores = {}
        for g in prunable:
            values = np.asarray(importance(model, g), dtype=np.float64).reshape(-1)
            if values.shape != (g.channels,):
                raise ValueError(
                    f"The importance callable returned {values.size} scores for group {g.index}, which has "
                    f"{g.channels} channels."
                )
            scores[g.index] = values
        return scores
    if importance == "random":
        rng = np.random.default_rng(0)
        return {g.index: rng.random(g.channels) for g in prunable}
    variables = _weight_variables(model, graph)
    cache: dict = {}

    def values_of(path, index):
        key = (path, index)
        if key not in cache:
            cache[key] = keras.ops.convert_to_numpy(variables[key]) if key in variables else None
        return cache[key]

    trainable = lambda record, s: s.trainable  # noqa: E731
    if importance == "taylor":
        if data is None:
            raise ValueError(
                "Argument `data` is needed by importance 'taylor': pass `(x, y)` arrays or batches. "
                "Received: data=None"
            )
        from tfsparse.calibration import Calibration

        keys = [key for key in variables if variables[key].trainable]
        gradients = Calibration(model, data, batches=None, batch_size=32, loss=loss).gradient_magnitudes(
            [variables[key] for key in keys]
        )
        products = {key: np.abs(values_of(*key)) * gradient for key, gradient in zip(keys, gradients)}
        return _accumulate(
            graph, prunable, lambda p, i: products.get((p, i)), lambda m: m.sum(axis=1), trainable
        )
    if importance == "bn_scale":
        with_norm = [
            g
            for g in prunable
            if any(m.kind == "norm" and any(w[0] == "gamma" for w in m.weights) for m in g.members)
        ]
        return _accumulate(graph, with_norm, values_of, lambda m: np.abs(m).sum(axis=1), _norm_layer_gamma)
    if importance == "l1":
        return _accumulate(graph, prunable, values_of, lambda m: np.abs(m).sum(axis=1), trainable)
    squares = _accumulate(graph, prunable, values_of, lambda m: np.square(m).sum(axis=1), trainable)
    l2 = {index: np.sqrt(values) for index, values in squares.items()}
    if importance == "lamp":
        return {index: criteria.lamp(values) for index, values in l2.items()}
    return l2
