"""`prune_low_magnitude` and `strip_pruning`: wrapping a model's layers for pruning and unwrapping them.

Both work on a layer, a list of layers, a Sequential or functional model, and on models nested inside
models. Models are copied: the model passed in keeps its own layers and weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras

from tfsparse import registry
from tfsparse.schedules import ConstantSparsity, PruningSchedule
from tfsparse.wrapper import PruneLowMagnitude, accepts_argument


def _is_graph_model(model: keras.Model) -> bool:
    # Sequential and functional models have a graph of layers that `clone_model` can rebuild;
    # subclassed models do not.
    return (
        isinstance(model, keras.Sequential)
        or isinstance(model, keras.Model)
        and hasattr(model, "_nodes_by_depth")
    )


def _check_graph_model(model: keras.Model, what: str) -> None:
    if not _is_graph_model(model):
        raise ValueError(
            f"{what} takes a Sequential or functional model; '{model.name}' is a subclassed "
            f"{type(model).__name__}. Wrap its layers instead, inside its __init__: "
            "`self.dense = tfsparse.prune_low_magnitude(keras.layers.Dense(10), ...)`."
        )


def _copy_layer(layer: keras.layers.Layer, weights=None) -> keras.layers.Layer:
    """A new layer with the same config and, if `layer` is built, the same (or given) weights."""
    copy = layer.__class__.from_config(layer.get_config())
    if not isinstance(layer, keras.layers.Layer):
        # A functional graph can hold bare operations (`x + y` on Keras tensors makes an `Add`
        # op, as in MobileNetV3): no weights, nothing to build.
        return copy
    if layer.built:
        copy.build_from_config(layer.get_build_config())
        copy.set_weights(layer.get_weights() if weights is None else weights)
    return copy


def _clone(model: keras.Model, clone_layer) -> keras.Model:
    def clone_function(layer):
        if isinstance(layer, keras.Model) and not isinstance(layer, PruneLowMagnitude):
            _check_graph_model(layer, "Pruning a nested model")
        return clone_layer(layer)

    def call_function(layer, *args, **kwargs):
        # A wrapper's graph node records `mask=`; the layer that replaces it may take no mask.
        if "mask" in kwargs and not accepts_argument(layer.call, "mask"):
            kwargs.pop("mask")
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):  # Sequential layers are listed, not called: no call_function.
        return keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    return keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function, recursive=True
    )


def prune_low_magnitude(
    to_prune,
    pruning_schedule: PruningSchedule | dict[str, PruningSchedule] | None = None,
    block_size: Sequence[int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: Sequence[int] | None = None,
    strict: bool = False,
    **kwargs,
):
    """Wraps every prunable layer of `to_prune` in `PruneLowMagnitude`.

    Same arguments as `tfmot.sparsity.keras.prune_low_magnitude`. Layers without weights to prune
    (pooling, activations, merges, and layers whose weights are all vectors: normalization,
    scales) are kept as they are. A layer with weight matrices that tfsparse does not know (a
    custom layer that is not a `PrunableLayer`) is kept unpruned too, with one warning naming it.
    Fit the result with the `UpdatePruningStep` callback, then `strip_pruning` it.

    Args:
        to_prune: a layer, a list of layers, or a Sequential or functional model (nested models
            included). Models are copied with their weights; layers are wrapped as they are.
        pruning_schedule: a `PruningSchedule`; defaults to `ConstantSparsity(0.5, 0)`. Or a dict
            `{layer name: PruningSchedule}` (e.g. from `tfsparse.auto_sparsity`): each named layer
            gets its own schedule, layers not named are left unpruned.
        block_size: `(rows, cols)` of the blocks pruned together.
        block_pooling_type: "AVG" or "MAX", how a block's scores are pooled.
        sparsity_m_by_n: `(m, n)`, e.g. `(2, 4)`, to keep `m` of every `n` consecutive weights.
        strict: raise `ValueError` for an unknown layer with weight matrices, instead of leaving
            it unpruned with a warning.
        **kwargs: further `PruneLowMagnitude` arguments (`criterion`, `scope`, `regularizer`,
            `score_normalization`, `min_density`).

    Returns:
        The same kind of object as `to_prune`, with prunable layers wrapped.

    Example:

    ```python
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule=tfsparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000))
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, callbacks=[tfsparse.UpdatePruningStep()])
    ```
    """
    if pruning_schedule is None:
        pruning_schedule = ConstantSparsity(0.5, 0)
    per_layer = dict(pruning_schedule) if isinstance(pruning_schedule, dict) else None
    for name, schedule in (per_layer or {}).items():
        if not isinstance(schedule, PruningSchedule):
            raise ValueError(
                f"Argument `pruning_schedule` must map layer names to `tfsparse.PruningSchedule`s such as "
                f"`ConstantSparsity(0.8, 0)`. Received: {{{name!r}: {schedule!r}}}"
            )
    parameters = dict(
        pruning_schedule=ConstantSparsity(0.5, 0) if per_layer is not None else pruning_schedule,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
        **kwargs,
    )
    # One throwaway wrapper checks every argument (the wrapper's own checks, whatever arguments it
    # grows) before any model is copied; naming the probe keeps Keras' layer-name counters as they are.
    PruneLowMagnitude(keras.layers.Dense(1, name="tfsparse_argument_check"), **parameters)

    left_out = []

    def wrap(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if per_layer is not None:
            if layer.name not in per_layer:
                return layer
            named.add(layer.name)
            return PruneLowMagnitude(layer, **{**parameters, "pruning_schedule": per_layer[layer.name]})
        if registry.is_prunable(layer, strict=strict):
            return PruneLowMagnitude(layer, **parameters)
        if registry.needs_opt_in(layer):
            left_out.append(layer)
        return layer

    def warn_left_out():
        if left_out:
            warnings.warn(registry.opt_in_message(left_out), stacklevel=3)

    named: set[str] = set()

    if isinstance(to_prune, PruneLowMagnitude):
        raise ValueError(f"Layer '{to_prune.name}' is already wrapped for pruning; wrap it once.")
    if isinstance(to_prune, keras.Model):
        _check_graph_model(to_prune, "`prune_low_magnitude`")

        def clone_layer(layer):
            if isinstance(layer, PruneLowMagnitude):
                raise ValueError(
                    f"Layer '{layer.name}' is already wrapped for pruning; strip the model first "
                    "(`tfsparse.strip_pruning`) or prune the original."
                )
            return wrap(_copy_layer(layer))

        pruned = _check_all_named(per_layer, named, _clone(to_prune, clone_layer))
        warn_left_out()
        return pruned
    if isinstance(to_prune, (list, tuple)):
        pruned = _check_all_named(per_layer, named, [wrap(layer) for layer in to_prune])
        warn_left_out()
        return pruned
    if isinstance(to_prune, keras.layers.Layer) and per_layer is not None:
        return _check_all_named(per_layer, named, wrap(to_prune))
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **parameters)
    raise ValueError(
        "Argument `to_prune` must be a Keras layer, a list of layers, or a Sequential or functional "
        f"model. Received: to_prune={to_prune!r} of type {type(to_prune).__name__}"
    )


def _check_all_named(per_layer: dict | None, named: set[str], result):
    """`result`, once every layer named in a per-layer schedule dict was found (and prunable)."""
    missing = sorted(set(per_layer or ()) - named)
    if missing:
        raise ValueError(
            f"Argument `pruning_schedule` names layers that are not prunable layers of the model: "
            f"{missing}. Name layers as in the model passed in (`[layer.name for layer in "
            "model.layers]`), layers with weights to prune."
        )
    return result


def _unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    if isinstance(layer, PruneLowMagnitude):
        return _copy_layer(layer.layer, weights=layer.masked_weights() if layer.built else None)
    return _copy_layer(layer)


def strip_pruning(model):
    """Returns a copy of `model` made of stock Keras layers, with the masks applied to the weights.

    The result gives the same outputs as the pruned model, loads without tfsparse, and is what to
    save, export or serve.

    Args:
        model: a model (or a single `PruneLowMagnitude` layer) from `prune_low_magnitude`.

    Returns:
        A copy with every `PruneLowMagnitude` replaced by its layer, weights multiplied by masks.

    Example:

    ```python
    final = tfsparse.strip_pruning(pruned)
    final.save("final.keras")
    ```
    """
    if isinstance(model, keras.Model):
        _check_graph_model(model, "`strip_pruning`")
        return _clone(model, _unwrap)
    if isinstance(model, keras.layers.Layer):
        return _unwrap(model)
    raise ValueError(
        f"Argument `model` must be a Keras model or layer. Received: model={model!r} of type {type(model).__name__}"
    )
