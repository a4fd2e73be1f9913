"""Model surgery: edit a model's config, rebuild it with `from_config`, set weights by layer name.

The one way tfsparse rebuilds a model (structured pruning, depth pruning, ...): the user's model is
never changed, and the result is an ordinary Keras model whose layers keep their names.
"""

from __future__ import annotations

import copy

import keras
import numpy as np


def model_config(model: keras.Model) -> dict:
    """A deep copy of `model`'s serialized config (what `keras.saving` writes), safe to edit.

    Args:
        model: a Sequential or functional model.

    Returns:
        A dict with `class_name`, `config` (its `layers`, each with `inbound_nodes`), `module`, ...

    Example:

    ```python
    config = model_config(model)
    layer_config(config, "dense")["units"] = 16
    ```
    """
    return copy.deepcopy(keras.saving.serialize_keras_object(model))


def _layer_entries(config: dict) -> list:
    return config["config"]["layers"]


def layer_config(config: dict, path: str) -> dict:
    """The config of the layer at `path` ("name" or "model/name") inside a `model_config` result.

    Args:
        config: from `model_config`.
        path: the layer's name, prefixed by nested model names.

    Returns:
        The layer's own `config` dict (edit it in place).

    Example:

    ```python
    layer_config(config, "block_1/conv")["filters"] = 8
    ```
    """
    return layer_entry(config, path)["config"]


def layer_entry(config: dict, path: str) -> dict:
    """The serialized entry (`class_name`, `config`, `inbound_nodes`, ...) of the layer at `path`.

    Args:
        config: from `model_config`.
        path: the layer's name, prefixed by nested model names ("block/conv").

    Returns:
        The entry dict (edit it in place; remove it from its model's `layers` to drop the layer).

    Example:

    ```python
    layer_entry(config, "dense")["inbound_nodes"]
    ```
    """
    entry = config
    for name in path.split("/"):
        for candidate in _layer_entries(entry):
            if candidate["config"].get("name") == name:
                entry = candidate
                break
        else:
            raise ValueError(
                f"No layer named '{name}' (in '{path}') in model config '{config['config']['name']}'."
            )
    return entry


def _strip_build_configs(entry) -> None:
    # Layers are built when the rebuilt graph calls them; stale input shapes (also those of layers
    # serialized inside wrappers such as Bidirectional) would refuse new widths.
    if isinstance(entry, dict):
        if "class_name" in entry and "config" in entry:
            entry.pop("build_config", None)
            entry.pop("compile_config", None)
        for value in entry.values():
            _strip_build_configs(value)
    elif isinstance(entry, list):
        for value in entry:
            _strip_build_configs(value)


def leaf_layers(model: keras.Model, prefix: str = "") -> dict:
    """`{path: layer}` for every layer of `model` that is not itself a model, nested ones included.

    Args:
        model: a Keras model.
        prefix: prepended to every path.

    Returns:
        `{"name" or "model/name": layer}`, in `model.layers` order.

    Example:

    ```python
    leaf_layers(model)["block/conv"].filters
    ```
    """
    found = {}
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            found.update(leaf_layers(layer, f"{path}/"))
        else:
            found[path] = layer
    return found


def layer_weights(model: keras.Model) -> dict:
    """`{path: [numpy weights]}` for every layer (paths as in `leaf_layers`).

    Args:
        model: a Keras model.

    Returns:
        Each layer's `get_weights()`, by path.

    Example:

    ```python
    weights = layer_weights(model)
    weights["dense"][0].shape   # the kernel
    ```
    """
    return {path: [np.asarray(w) for w in layer.get_weights()] for path, layer in leaf_layers(model).items()}


def custom_objects(model: keras.Model) -> dict:
    """`{name: class}` of every layer class in `model` (nested ones included), so that a rebuild
    finds custom layers that are not registered with Keras.

    Args:
        model: the model whose config is being rebuilt.

    Returns:
        Class names and registered names mapped to classes (Keras' own classes left out).

    Example:

    ```python
    rebuild(config, weights, custom_objects(model))
    ```
    """
    found = {}
    for layer in model.layers:
        cls = type(layer)
        if not cls.__module__.startswith("keras."):  # Keras' own are found by module
            found[cls.__name__] = cls
            found[keras.saving.get_registered_name(cls)] = cls
        if isinstance(layer, keras.Model):
            found.update(custom_objects(layer))
    return found


def rebuild(config: dict, weights: dict, custom_objects: dict | None = None) -> keras.Model:
    """A new model from an edited `model_config`, with weights set by layer path.

    Args:
        config: a `model_config(model)` result, edited (layer configs changed, layers removed and
            inbound nodes rewired). Build configs are dropped, so layers take their new input widths.
        weights: `{path: [numpy arrays]}` for each layer with weights (`layer_weights` of the
            original, with sliced arrays where shapes changed). Layers not listed keep fresh weights.
        custom_objects: classes of custom layers that are not registered with Keras
            (`custom_objects(model)` of the original).

    Returns:
        An ordinary Keras model; every layer keeps its name.

    Example:

    ```python
    config = model_config(model)
    layer_config(config, "dense")["units"] = 16
    weights = layer_weights(model)
    weights["dense"] = [weights["dense"][0][:, :16], weights["dense"][1][:16]]
    weights["dense_1"] = [weights["dense_1"][0][:16], weights["dense_1"][1]]
    smaller = rebuild(config, weights)
    ```
    """
    config = copy.deepcopy(config)
    _strip_build_configs(config)
    # The config comes from a model already in this process (not a file), so its Lambda layers'
    # functions are the user's own: safe mode would only refuse them.
    model = keras.saving.deserialize_keras_object(config, custom_objects=custom_objects, safe_mode=False)
    for path, layer in leaf_layers(model).items():
        if path not in weights:
            continue
        values = weights[path]
        expected = [tuple(w.shape) for w in layer.weights]
        received = [tuple(np.shape(v)) for v in values]
        if expected != received:
            raise ValueError(
                f"Layer '{path}' of the rebuilt model has weights of shapes {expected}, but the weights "
                f"given have shapes {received}: the config edit and the sliced weights disagree."
            )
        layer.set_weights(values)
    return model


def slice_weights(values: list, slices: list, keep) -> list:
    """Each weight with every position of its sliced axes whose channel is removed taken out.

    Args:
        values: a layer's weights, in `layer.weights` order.
        slices: `WeightSlice`s of the layer (weight index, axis, atoms).
        keep: `keep(atoms) -> bool mask`.

    Returns:
        The sliced weights, same order.

    Example:

    ```python
    graph = DependencyGraph(model)
    record = graph.layers["dense"]
    slice_weights(layer_weights(model)["dense"], record.slices, graph.keep_function({1: [0]}))
    ```
    """
    values = list(values)
    for s in slices:
        mask = keep(s.atoms)
        if not mask.all():
            values[s.index] = np.compress(mask, values[s.index], axis=s.axis)
    return values
