"""`fold_batch_norms`: batch normalization folded into the Dense or convolution layer before it.

TFLite's converter folds a BatchNormalization that follows a convolution into its kernel and bias;
quantization-aware training folds first too, so that it trains and rounds what the int8 file
computes (one convolution with a bias) instead of a separate int8 multiply and add.
"""

from __future__ import annotations

import collections

import keras
import numpy as np

from tfsparse._kernels import computes_on_kernel, is_depthwise

__all__ = ["batch_norm_folds", "fold_batch_norms"]


def _histories(node) -> list:
    """Every `keras_history` ([layer name, node index, tensor index]) inside a serialized call."""
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            return [node["config"]["keras_history"]]
        return [history for value in node.values() for history in _histories(value)]
    if isinstance(node, (list, tuple)):
        return [history for value in node for history in _histories(value)]
    return []


def _retarget(node, old: str, new: str) -> None:
    """Points every reference to layer `old`'s output inside a serialized call at layer `new`."""
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            history = node["config"]["keras_history"]
            if history[0] == old:
                node["config"]["keras_history"] = [new, 0, 0]
            return
        for value in node.values():
            _retarget(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _retarget(value, old, new)


def _output_layers(config: dict) -> list:
    outputs = config["config"]["output_layers"]
    # A single output is serialized as one [name, node, tensor] triple, several as a list of them.
    return [outputs] if outputs and isinstance(outputs[0], str) else list(outputs)


def _retarget_outputs(config: dict, old: str, new: str) -> None:
    outputs = config["config"]["output_layers"]
    for history in [outputs] if outputs and isinstance(outputs[0], str) else outputs:
        if history[0] == old:
            history[:] = [new, 0, 0]


def _folds_into(layer: keras.layers.Layer) -> bool:
    """Whether a batch normalization after `layer` can become part of its kernel and bias."""
    if not computes_on_kernel(layer):
        return False
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return False
    if layer.get_config().get("activation", "linear") != "linear":
        return False  # the normalization applies to the activation's output
    # LoRA and Keras-quantized kernels are not one float kernel that a scale can multiply.
    return not getattr(layer, "lora_enabled", False) and not getattr(layer, "quantization_mode", None)


def _normalizes_last_axis(layer: keras.layers.BatchNormalization) -> bool:
    rank = len(layer.input.shape)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def batch_norm_folds(model: keras.Model) -> dict[str, str]:
    """Which batch normalizations of `model` `fold_batch_norms` folds, and into which layer.

    A BatchNormalization folds when it normalizes the last axis, is called once, and its input is
    the output of a Dense, Conv1D/2D/3D or DepthwiseConv1D/2D layer (channels_last, no activation,
    called once) that feeds nothing else. A normalization after an activation, after a layer whose
    output is also used elsewhere, or after any other layer is left alone.

    Args:
        model: a functional or Sequential model.

    Returns:
        `{batch normalization name: name of the layer it folds into}`, a plain dict.

    Example:

    ```python
    tfsparse.quantization.batch_norm_folds(model)   # {"bn_1": "conv_1", ...}
    ```
    """
    from tfsparse.structured import surgery

    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError(
            f"`fold_batch_norms` takes a functional or Sequential Keras model. Received: model={model!r}. "
            "Build the model from `keras.Input`s."
        )
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    config = surgery.model_config(model)
    entries = {entry["config"]["name"]: entry for entry in config["config"]["layers"]}
    uses = collections.Counter(
        history[0] for entry in entries.values() for history in _histories(entry["inbound_nodes"])
    )
    uses.update(history[0] for history in _output_layers(config))
    folds = {}
    for layer in model.layers:
        if (
            not isinstance(layer, keras.layers.BatchNormalization)
            or len(entries[layer.name]["inbound_nodes"]) != 1
        ):
            continue
        sources = _histories(entries[layer.name]["inbound_nodes"])
        if len(sources) != 1:
            continue
        producer = sources[0][0]
        if (
            producer in entries
            and len(entries[producer]["inbound_nodes"]) == 1
            and uses[producer] == 1
            and _folds_into(model.get_layer(producer))
            and _normalizes_last_axis(layer)
        ):
            folds[layer.name] = producer
    return folds


def folded_weights(
    layer: keras.layers.Layer, batch_norm: keras.layers.BatchNormalization
) -> list[np.ndarray]:
    """`layer`'s kernel and bias with `batch_norm` (inference statistics) folded in.

    kernel * gamma / sqrt(variance + epsilon) per output channel (for a depthwise kernel
    (..., in, multiplier), channel in * multiplier + m), and
    beta + (bias - mean) * gamma / sqrt(variance + epsilon). A zero weight stays zero.

    Args:
        layer: a Dense or convolution layer (channels_last).
        batch_norm: the batch normalization of its output, over the last axis.

    Returns:
        `[kernel, bias]`, in the kernel's dtype.

    Example:

    ```python
    kernel, bias = folded_weights(model.get_layer("conv"), model.get_layer("bn"))
    ```
    """
    kernel = np.asarray(layer.kernel)
    channels = int(np.asarray(batch_norm.moving_mean).shape[0])
    gamma = np.asarray(batch_norm.gamma, "float64") if batch_norm.gamma is not None else np.ones(channels)
    beta = np.asarray(batch_norm.beta, "float64") if batch_norm.beta is not None else np.zeros(channels)
    mean = np.asarray(batch_norm.moving_mean, "float64")
    variance = np.asarray(batch_norm.moving_variance, "float64")
    scale = gamma / np.sqrt(variance + batch_norm.epsilon)
    bias = (
        np.asarray(layer.bias, "float64") if getattr(layer, "bias", None) is not None else np.zeros(channels)
    )
    shape = kernel.shape[-2:] if is_depthwise(layer) else kernel.shape[-1:]
    folded_kernel = kernel.astype("float64") * scale.reshape(shape)
    folded_bias = beta + (bias - mean) * scale
    return [folded_kernel.astype(kernel.dtype), folded_bias.astype(kernel.dtype)]


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of `model` with each batch normalization folded into the layer before it.

    The folds are those of `batch_norm_folds`: the normalization's layer is removed, its consumers
    read the Dense or convolution output directly, and that layer computes with the folded kernel
    and bias (its `use_bias` becomes True). With the inference statistics (moving mean and
    variance), the copy computes what the original computes in inference. The normalization no
    longer adapts to new batches: training the copy trains the folded kernel and bias. Zeros of a
    pruned kernel stay zero. Every other layer keeps its name, config and weights.

    The moving statistics must describe the model as it is: after one-shot pruning they still
    describe the dense model, so re-estimate them first (fit an epoch at learning rate 0, which
    moves no weight but updates the statistics).

    Args:
        model: a functional or Sequential model; a pruned model is stripped first. Layers inside
            nested models and clustered layers are left as they are.

    Returns:
        A functional Keras model with the same inputs and outputs.

    Example:

    ```python
    folded = tfsparse.quantization.fold_batch_norms(tfsparse.strip_pruning(pruned))
    ```
    """
    from tfsparse.export._files import plain_model  # strips pruning wrappers; imports no TensorFlow
    from tfsparse.structured import surgery

    if not isinstance(model, keras.Model):
        raise ValueError(f"Argument `model` must be a Keras model. Received: model={model!r}")
    model = plain_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    folds = batch_norm_folds(model)
    config = surgery.model_config(model)
    weights = surgery.layer_weights(model)
    layers = []
    for entry in config["config"]["layers"]:
        name = entry["config"]["name"]
        if name in folds:
            weights.pop(name, None)
            continue
        layers.append(entry)
    config["config"]["layers"] = layers
    for batch_norm, producer in folds.items():
        for entry in layers:
            _retarget(entry["inbound_nodes"], batch_norm, producer)
        _retarget_outputs(config, batch_norm, producer)
        surgery.layer_config(config, producer)["use_bias"] = True
        weights[producer] = folded_weights(model.get_layer(producer), model.get_layer(batch_norm))
    return surgery.rebuild(config, weights, surgery.custom_objects(model))
