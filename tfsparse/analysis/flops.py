"""FLOPs per example, per layer, from the shapes recorded in a model's graph (a multiply-add is 2)."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

from tfsparse import registry
from tfsparse.wrapper import PruneLowMagnitude

L = keras.layers


_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_POOLING = (
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
)
_GLOBAL_POOLING = (
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
)
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_NORMALIZATIONS = (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization)
_RNNS = (L.LSTM, L.GRU, L.SimpleRNN)


def _node_calls(model: keras.Model, layer: keras.layers.Layer) -> list[tuple[list, list]]:
    """(input shapes, output shapes) of each call of `layer` inside `model`'s graph.

    Keras records calls only as private graph nodes (`_inbound_nodes`, and a model's `_nodes` keys
    to tell its own calls from those in another model sharing the layer); no public API gives the
    shapes of a layer called more than once, so this is the one place that reads them.
    """
    graph = getattr(model, "_functional", None) or model  # a Sequential keeps its graph there
    keys = getattr(graph, "_nodes", None)
    calls = []
    for index, node in enumerate(getattr(layer, "_inbound_nodes", ())):
        if keys is not None and f"{id(layer)}_ib-{index}" not in keys:
            continue
        calls.append(([tuple(t.shape) for t in node.input_tensors], [tuple(t.shape) for t in node.outputs]))
    return calls


def _per_example(shape, layer) -> tuple[int, ...]:
    dims = tuple(shape[1:])
    if any(d is None for d in dims):
        raise ValueError(
            f"`count_flops` needs fixed shapes, but layer '{layer.name}' sees shape {tuple(shape)}. "
            "Build the model on a `keras.Input` with every dimension but the batch given."
        )
    return (1, *dims)


def _positions(shape, data_format: str) -> int:
    """Spatial positions (everything but batch and channels) of a convolution's input or output."""
    return math.prod(shape[2:] if data_format == "channels_first" else shape[1:-1])


def _affine(uses: int, kernel_count: int, bias) -> int:
    # Every kernel weight takes part in `uses` multiply-adds; every bias value in `uses` adds.
    return 2 * uses * kernel_count + (uses * math.prod(bias.shape) if bias is not None else 0)


def _einsum_uses(layer, output_shape) -> int:
    # A kernel weight is used once for each output position outside the kernel's own output axes.
    _, rest = layer.equation.split(",")
    kernel_spec, output_spec = rest.split("->")
    kernel_in_output = math.prod(
        dim for letter, dim in zip(kernel_spec, layer.kernel.shape) if letter in output_spec
    )
    return math.prod(output_shape) // kernel_in_output


def _layer_flops(layer, inputs: list, outputs: list, count) -> int | None:
    """FLOPs of one call; `count(variable)` is how many of the weight's values are multiplied.

    Returns None for a layer with weights of a kind this module does not know.
    """
    first_in = inputs[0] if inputs else ()
    first_out = outputs[0] if outputs else ()
    out_elements = math.prod(first_out) if outputs else 0
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", True) else None
    if isinstance(layer, L.Dense):
        return _affine(out_elements // layer.units, count(layer.kernel), bias)
    if isinstance(layer, L.EinsumDense):
        return _affine(_einsum_uses(layer, first_out), count(layer.kernel), None) + (
            out_elements if bias is not None else 0
        )
    if isinstance(layer, _CONVOLUTIONS):
        uses = _positions(first_out, layer.data_format)
        return 2 * uses * count(layer.kernel) + (out_elements if bias is not None else 0)
    if isinstance(layer, _TRANSPOSED):
        uses = _positions(first_in, layer.data_format)
        return 2 * uses * count(layer.kernel) + (out_elements if bias is not None else 0)
    if isinstance(layer, _DEPTHWISE):
        uses = _positions(first_out, layer.data_format)
        kernel = registry.prunable_weights(layer)[0]  # the depthwise kernel's name varies by version
        return 2 * uses * count(kernel) + (out_elements if bias is not None else 0)
    if isinstance(layer, _SEPARABLE):
        uses = _positions(first_out, layer.data_format)
        kernels = count(layer.depthwise_kernel) + count(layer.pointwise_kernel)
        return 2 * uses * kernels + (out_elements if bias is not None else 0)
    if isinstance(layer, _RNNS):
        steps = first_in[1]
        cell = layer.cell
        per_step = 2 * (count(cell.kernel) + count(cell.recurrent_kernel))
        return steps * (per_step + (math.prod(cell.bias.shape) if cell.use_bias else 0))
    if isinstance(layer, L.MultiHeadAttention):
        return _attention_flops(layer, inputs, count)
    if isinstance(layer, L.Bidirectional):
        return sum(
            _layer_flops(sub, inputs, outputs, count) or 0
            for sub in (layer.forward_layer, layer.backward_layer)
        )
    if isinstance(layer, L.TimeDistributed):
        steps = first_in[1]
        inner = _layer_flops(layer.layer, [(1, *first_in[2:])], [(1, *first_out[2:])], count)
        return None if inner is None else steps * inner
    if isinstance(layer, _NORMALIZATIONS):
        return 2 * out_elements
    if isinstance(layer, _POOLING):
        return out_elements * math.prod(layer.pool_size)
    if isinstance(layer, _GLOBAL_POOLING):
        return math.prod(first_in)
    if isinstance(layer, _MERGES):
        return (len(inputs) - 1) * out_elements
    if isinstance(layer, L.Embedding) or not layer.weights:
        return 0  # lookups, activations, reshapes, dropout: no arithmetic counted
    return None


def _attention_flops(layer, inputs: list, count) -> int:
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 and len(inputs[2]) == len(value) else value
    query_steps, key_steps = math.prod(query[1:-1]), math.prod(key[1:-1])
    flops = 0
    for dense, steps in (
        (layer.query_dense, query_steps),
        (layer.key_dense, key_steps),
        (layer.value_dense, math.prod(value[1:-1])),
        (layer.output_dense, query_steps),
    ):
        bias = getattr(dense, "bias", None)
        flops += _affine(steps, count(dense.kernel), bias)
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    # Scores (query . key) and the weighted sum of values, per head: multiply-adds.
    return flops + 2 * heads * query_steps * key_steps * (key_dim + value_dim)


def flops_by_layer(model: keras.Model, sparse: bool = False) -> dict[str, int]:
    """FLOPs of each layer of `model` for one example (batch 1), keyed by layer path.

    Conventions: a multiply-add counts as 2 FLOPs; a bias add, a pooled value, and each
    element of a merge (Add, Multiply, ...) as 1; normalization as 2 per element (the scale and
    shift batch normalization folds into at inference; the statistics of layer and group
    normalization are not counted). Activation functions, lookups and reshapes count 0. A layer
    called several times counts each call. Shapes come from the model's graph, so the model must
    be Sequential or functional with fixed input shapes.

    Args:
        model: a built Sequential or functional model (pruned, stripped or plain; nested models too).
        sparse: count only the multiply-adds of non-zero weights, the work a sparse kernel does.

    Returns:
        `{layer path: FLOPs}` for the layers that compute something (nested layers as
        "inner_model/layer"; pruned layers under their inner layer's name).

    Example:

    ```python
    flops_by_layer(model)  # {'conv2d': 10368, 'max_pooling2d': 2048, 'dense': 65600, ...}
    ```
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`count_flops` takes a Keras model. Received: model={model!r} of type {type(model).__name__}"
        )
    result: dict[str, int] = {}
    unknown: list[str] = []

    def visit(graph: keras.Model, prefix: str, repeats: int):
        for layer in graph.layers:
            calls = _node_calls(graph, layer)
            if isinstance(layer, keras.Model) and not isinstance(layer, PruneLowMagnitude):
                if calls or layer.weights:
                    visit(layer, f"{prefix}{layer.name}/", repeats * max(len(calls), 1))
                continue
            inner, count = layer, _counter(None, sparse)
            if isinstance(layer, PruneLowMagnitude):
                inner = layer.layer
                count = _counter(layer, sparse)
            if not calls:
                if layer.weights:
                    raise ValueError(
                        f"`count_flops` reads layer shapes from a Sequential or functional model's "
                        f"graph, but layer '{layer.name}' was never called in one (a subclassed "
                        "model, or a Sequential model that is not built)."
                    )
                continue
            total = 0
            for inputs, outputs in calls:
                inputs = [_per_example(s, layer) for s in inputs]
                outputs = [_per_example(s, layer) for s in outputs]
                flops = _layer_flops(inner, inputs, outputs, count)
                if flops is None:
                    unknown.append(f"{prefix}{inner.name} ({type(inner).__name__})")
                    flops = 0
                total += flops
            if total:
                key = f"{prefix}{inner.name}"
                result[key] = result.get(key, 0) + repeats * total

    visit(model, "", 1)
    if unknown:
        warnings.warn(
            "count_flops does not know these layers with weights and counted them as 0: "
            + ", ".join(dict.fromkeys(unknown)),
            stacklevel=3,
        )
    return result


def _counter(wrapper: PruneLowMagnitude | None, sparse: bool):
    """`count(variable)`: the variable's size, or with `sparse` its non-zeros (masked for wrappers)."""
    if not sparse:
        return lambda variable: math.prod(variable.shape)
    masks = {}
    if wrapper is not None:
        masks = {id(w): m for w, m in zip(wrapper.pruned_weights, wrapper.get_masks())}

    def count(variable):
        value = ops.convert_to_numpy(variable.value)
        if id(variable) in masks:
            value = value * masks[id(variable)]
        return int(np.count_nonzero(value))

    return count


def count_flops(model: keras.Model, sparse: bool = False) -> int:
    """Floating-point operations of one forward pass of `model` for a single example (batch 1).

    A multiply-add counts as 2 FLOPs (see `flops_by_layer` for the full convention). Supported:
    Dense, EinsumDense, Conv1D/2D/3D and their transposes, DepthwiseConv1D/2D, SeparableConv1D/2D,
    LSTM/GRU/SimpleRNN, MultiHeadAttention, Bidirectional, TimeDistributed, pooling, normalization and
    merge layers; layers without weights (activations, reshapes, dropout) count 0; other layers with
    weights count 0 with a warning.

    Args:
        model: a built Sequential or functional model with fixed input shapes.
        sparse: count only multiply-adds with non-zero weights (what a sparse kernel computes);
            the default counts the dense work, which structured pruning reduces.

    Returns:
        The number of FLOPs, an int.

    Example:

    ```python
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    tfsparse.analysis.count_flops(model)  # 28: 12 multiply-adds and 4 bias adds
    ```
    """
    return sum(flops_by_layer(model, sparse=sparse).values())
