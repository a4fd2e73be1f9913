"""Which weights of which layer are pruned, and `PrunableLayer` for custom layers to say so."""

from __future__ import annotations

import abc

import keras
from keras import layers

# Layers are matched with isinstance, so subclasses of these are prunable too. Each weight is named
# by its attribute path from the layer; "a|b" takes whichever attribute the installed Keras has
# (DepthwiseConv2D's kernel was renamed across Keras 3 releases).
_PRUNABLE_ATTRIBUTES: tuple[tuple[tuple[type, ...], tuple[str, ...]], ...] = (
    (
        (
            layers.Dense,
            layers.EinsumDense,
            layers.Conv1D,
            layers.Conv2D,
            layers.Conv3D,
            layers.Conv1DTranspose,
            layers.Conv2DTranspose,
            layers.Conv3DTranspose,
        ),
        ("kernel",),
    ),
    ((layers.DepthwiseConv1D, layers.DepthwiseConv2D), ("depthwise_kernel|kernel",)),
    ((layers.SeparableConv1D, layers.SeparableConv2D), ("depthwise_kernel", "pointwise_kernel")),
    ((layers.Embedding,), ("embeddings",)),
    ((layers.LSTM, layers.GRU, layers.SimpleRNN), ("cell.kernel", "cell.recurrent_kernel")),
    (
        (layers.MultiHeadAttention,),
        ("query_dense.kernel", "key_dense.kernel", "value_dense.kernel", "output_dense.kernel"),
    ),
)

# Layers whose weights are not worth pruning (normalization statistics and scales): left unwrapped.
_NOT_PRUNED: tuple[type, ...] = (
    layers.BatchNormalization,
    layers.LayerNormalization,
    layers.GroupNormalization,
    layers.Normalization,
    layers.PReLU,
)


class PrunableLayer(abc.ABC):
    """Declares which weights of a custom layer are pruned.

    A custom layer with weights must subclass `PrunableLayer` (or simply define a
    `get_prunable_weights()` method) to be wrapped by `prune_low_magnitude`.

    Example:

    ```python
    class MyDense(keras.layers.Layer, tfsparse.PrunableLayer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 8))

        def call(self, x):
            return x @ self.kernel

        def get_prunable_weights(self):
            return [self.kernel]
    ```
    """

    @abc.abstractmethod
    def get_prunable_weights(self) -> list:
        """Returns the list of the layer's variables to prune."""

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is PrunableLayer and callable(getattr(subclass, "get_prunable_weights", None)):
            return True
        return NotImplemented


def _sublayers(layer: keras.layers.Layer) -> list | None:
    """The layers inside a wrapper layer whose weights are pruned for it."""
    if isinstance(layer, layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    if isinstance(layer, layers.TimeDistributed):
        return [layer.layer]
    return None


def _attribute_paths(layer: keras.layers.Layer) -> tuple[str, ...] | None:
    for classes, paths in _PRUNABLE_ATTRIBUTES:
        if isinstance(layer, classes):
            return paths
    return None


def _resolve(layer: keras.layers.Layer, path: str):
    for alternative in path.split("|"):
        value = layer
        for attribute in alternative.split("."):
            value = getattr(value, attribute, None)
        if isinstance(value, keras.Variable):
            return value
    raise ValueError(
        f"Layer '{layer.name}' of type {type(layer).__name__} has no weight '{path}' in this Keras "
        f"version ({keras.__version__}). Subclass `tfsparse.PrunableLayer` to say which weights to prune."
    )


def _is_known(layer: keras.layers.Layer) -> bool:
    if _attribute_paths(layer) is not None:
        return True
    sublayers = _sublayers(layer)
    return sublayers is not None and all(_is_known(sublayer) for sublayer in sublayers)


def _matrices(layer: keras.layers.Layer) -> list:
    # An unbuilt layer of an unknown kind has no weights yet, so there is nothing to judge by:
    # it is left as it is. Layers of a model being pruned are built, and judged by their weights.
    # Vectors (scales, biases, normalization statistics) are never worth pruning.
    if not layer.built:
        return []
    return [weight for weight in layer.weights if len(weight.shape) >= 2]


def needs_opt_in(layer: keras.layers.Layer) -> bool:
    """Whether `layer` has weight matrices but tfsparse does not know which of them to prune.

    Such a layer is left unpruned by `prune_low_magnitude` (with a warning) until it subclasses
    `PrunableLayer`; layers whose weights are all vectors are simply not pruned.

    Args:
        layer: any Keras layer.

    Returns:
        True for an unknown layer with weights of rank 2 or more.

    Example:

    ```python
    needs_opt_in(keras.layers.BatchNormalization())  # False: known, and only vectors
    ```
    """
    if isinstance(layer, PrunableLayer) or _is_known(layer) or isinstance(layer, _NOT_PRUNED):
        return False
    return bool(_matrices(layer))


def opt_in_message(layers_left_out: list) -> str:
    """The warning (or, with `strict=True`, the error) for layers that `needs_opt_in`."""
    names = ", ".join(f"'{layer.name}' of type {type(layer).__name__}" for layer in layers_left_out)
    plural = len(layers_left_out) > 1
    return (
        f"Layer{'s' if plural else ''} {names} {'have' if plural else 'has'} weight matrices but tfsparse "
        f"does not know which of them to prune, so {'they are' if plural else 'it is'} left unpruned. "
        "To prune such a layer, subclass `tfsparse.PrunableLayer` and return the weights to prune from "
        "`get_prunable_weights()`; pass `strict=True` to `prune_low_magnitude` to make this an error."
    )


def is_prunable(layer: keras.layers.Layer, strict: bool = True) -> bool:
    """Whether `prune_low_magnitude` wraps this layer.

    Args:
        layer: any Keras layer.
        strict: raise `ValueError` for a layer with weight matrices that is neither a known layer
            nor a `PrunableLayer` (silently leaving it dense would miss the requested sparsity);
            with False such a layer is reported as not prunable.

    Returns:
        True if the layer is known or a `PrunableLayer`; False for layers without weights or with
        vectors only (pooling, normalization, scales).

    Example:

    ```python
    is_prunable(keras.layers.Dense(4))  # True
    is_prunable(keras.layers.MaxPooling2D())  # False
    ```
    """
    if isinstance(layer, PrunableLayer) or _is_known(layer):
        return True
    if strict and needs_opt_in(layer):
        raise ValueError(opt_in_message([layer]))
    return False


def prunable_weights(layer: keras.layers.Layer) -> list:
    """The variables of a built, prunable `layer` that are pruned.

    Example:

    ```python
    layer = keras.layers.Dense(4)
    layer.build((None, 3))
    [w.name for w in prunable_weights(layer)]  # ['kernel']
    ```
    """
    if isinstance(layer, PrunableLayer):
        return list(layer.get_prunable_weights())
    sublayers = _sublayers(layer)
    if sublayers is not None:
        return [weight for sublayer in sublayers for weight in prunable_weights(sublayer)]
    return [_resolve(layer, path) for path in _attribute_paths(layer) or ()]
