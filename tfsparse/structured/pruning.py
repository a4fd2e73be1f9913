"""Carrying out a structured plan: a new, smaller model with the same inputs, outputs and layer names."""

from __future__ import annotations

import keras

from tfsparse.structured import surgery
from tfsparse.structured.graph import DependencyGraph
from tfsparse.structured.plan import Plan, _check_arguments, plan_for_graph


def _check_plan_groups(graph: DependencyGraph, plan: Plan) -> None:
    for g, info in plan.groups.items():
        if g >= len(graph.groups) or graph.groups[g].channels != info.get("channels"):
            raise ValueError(
                f"The plan was made for a model whose group {g} has {info.get('channels')} channels "
                f"({', '.join(info.get('layers', []))}), but model '{graph.model.name}' "
                + (
                    f"has {graph.groups[g].channels} there."
                    if g < len(graph.groups)
                    else "has no such group."
                )
                + " Make the plan from this model."
            )


def _set_input_width(config: dict, path: str, index: int, width: int) -> None:
    """Sets the channel count of input `index` of the nested model at `path` inside a model config."""
    entry = surgery.layer_entry(config, path)
    inner = entry["config"]
    layers = inner["layers"]
    if "input_layers" in inner:  # functional
        names = inner["input_layers"]
        names = [names] if names and isinstance(names[0], str) else names
        name = names[index][0]
        target = next(layer for layer in layers if layer["config"].get("name") == name)
        target["config"]["batch_shape"] = [*target["config"]["batch_shape"][:-1], width]
    else:  # Sequential
        if layers and layers[0]["class_name"] == "InputLayer":
            shape = layers[0]["config"]["batch_shape"]
            layers[0]["config"]["batch_shape"] = [*shape[:-1], width]
        if inner.get("build_input_shape"):
            inner["build_input_shape"] = [*inner["build_input_shape"][:-1], width]


def apply(model: keras.Model, plan: Plan) -> keras.Model:
    """A new model with the plan's channels removed; `model` is not changed.

    Args:
        model: the model the plan was made for (or one with the same architecture).
        plan: a `Plan` (from `plan`, `Plan.from_json`, or built from a `removed` dict).

    Returns:
        An ordinary `keras.Model` (not compiled), same inputs and outputs, same layer names, with
        weights sliced from `model`. It saves as `.keras` and loads without tfsparse.

    Example:

    ```python
    p = plan(model, ratio=0.5)
    small = apply(model, p)
    ```
    """
    if not isinstance(plan, Plan):
        raise ValueError(f"Argument `plan` must be a tfsparse.structured.Plan. Received: plan={plan!r}")
    return _apply(model, plan, DependencyGraph(model, ignored_layers=plan.ignored_layers))


def _apply(model: keras.Model, plan: Plan, graph: DependencyGraph) -> keras.Model:
    _check_plan_groups(graph, plan)
    keep = graph.keep_function(plan.removed)
    config = surgery.model_config(model)
    weights = surgery.layer_weights(model)
    leaves = surgery.leaf_layers(model)
    for path, record in graph.layers.items():
        if path not in leaves:  # a nested model: its inputs may narrow
            for name, space in record.spaces.items():
                if name.startswith("input_"):
                    mask = keep(space.atoms)
                    if not mask.all():
                        _set_input_width(config, path, int(name.split("_")[1]), int(mask.sum()))
            continue
        layer_config = surgery.layer_config(config, path)
        for key, atoms, transform in record.edits:
            kept = int(keep(atoms).sum())
            layer_config[key] = transform(kept, layer_config[key]) if transform else kept
        if record.slices:
            values = surgery.slice_weights(weights[path], record.slices, keep)
            for finish in record.finishers:
                values = finish(values, keep)
            weights[path] = values
    return surgery.rebuild(config, weights, surgery.custom_objects(model))


def prune(
    model: keras.Model,
    ratio=0.5,
    importance="l2",
    scope: str = "layer",
    ignored_layers=(),
    round_to: int = 1,
    max_ratio: float = 0.9,
    data=None,
    loss=None,
) -> keras.Model:
    """Removes whole channels, filters, neurons and heads: `apply(model, plan(model, ...))`.

    Args:
        model: a Sequential or functional model (nested models allowed).
        ratio: share of each group's channels to remove, or `{layer name: ratio}`.
        importance: "l1", "l2", "bn_scale", "taylor", "lamp", "random", or `fn(model, group) -> scores`.
        scope: "layer" or "global" (see `plan`).
        ignored_layers: layers whose own channels stay whole (see `DependencyGraph`).
        round_to: keep channel counts at multiples of this.
        max_ratio: no group loses more than this share.
        data: `(x, y)` for "taylor".
        loss: the loss for "taylor" (defaults to the compiled loss).

    Returns:
        A smaller, ordinary `keras.Model` with the same inputs and outputs.

    Example:

    ```python
    small = tfsparse.structured.prune(model, ratio=0.5, importance="l1", round_to=8)
    small.compile(...); small.fit(...)   # fine-tune
    ```
    """
    _check_arguments(ratio, scope, round_to, max_ratio)
    graph = DependencyGraph(model, ignored_layers=ignored_layers)
    decided = plan_for_graph(model, graph, ratio, importance, scope, round_to, max_ratio, data, loss)
    return _apply(model, decided, graph)
