"""`cluster_weights` and `strip_clustering`: weight sharing for a model's Dense and convolution kernels."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfsparse._kernels import computes_on_kernel
from tfsparse.clustering.wrapper import ClusterWeights, check_arguments


def _copy(layer: keras.layers.Layer, weights=None) -> keras.layers.Layer:
    copy = layer.__class__.from_config(layer.get_config())
    if layer.built:
        copy.build_from_config(layer.get_build_config())
        copy.set_weights(layer.get_weights() if weights is None else weights)
    return copy


def _graph_model(model, what: str) -> keras.Model:
    from tfsparse.export._files import plain_model  # strips pruning wrappers; imports no TensorFlow

    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `model` of {what} must be a Keras model. Received: model={model!r} of type {type(model).__name__}"
        )
    model = plain_model(model)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"{what} takes a model without nested models; layer '{layer.name}' is a "
                f"{type(layer).__name__}. Flatten it first: build one functional model of its layers."
            )
    return model


def cluster_weights(
    model: keras.Model,
    number_of_clusters: int = 16,
    init: str = "kmeans++",
    preserve_sparsity: bool = True,
    per_channel: bool = False,
) -> keras.Model:
    """A copy of `model` whose Dense and convolution kernels share `number_of_clusters` values each.

    Same idea as tfmot's `cluster_weights`: each kernel value is replaced by its cluster's
    centroid. Fine-tune the copy with `fit()` and the `UpdateClusterAssignments` callback (the
    centroids are trainable), then `strip_clustering` it. With `preserve_sparsity`, pruned zeros
    stay zero and are not clustered, so a pruned and clustered kernel holds at most k values + 0.

    Args:
        model: a Sequential or functional model, pruned (stripped first) or not.
        number_of_clusters: distinct values per kernel (per output channel with `per_channel`).
        init: "kmeans++", "linear" or "density": where the centroids start.
        preserve_sparsity: keep zero weights at zero.
        per_channel: one set of centroids per output channel.

    Returns:
        The copy, with `ClusterWeights` around every Dense and convolution layer.

    Raises:
        ValueError: bad arguments, a subclassed or nested model, or one with no layer to cluster.

    Example:

    ```python
    clustered = tfsparse.clustering.cluster_weights(final, number_of_clusters=16)
    clustered.compile("adam", loss)
    clustered.fit(x, y, epochs=2, callbacks=[tfsparse.clustering.UpdateClusterAssignments()])
    small = tfsparse.clustering.strip_clustering(clustered)
    ```
    """
    check_arguments(number_of_clusters, init, preserve_sparsity, per_channel)
    model = _graph_model(model, "`cluster_weights`")
    for layer in model.layers:
        if isinstance(layer, ClusterWeights):
            raise ValueError(
                f"Layer '{layer.name}' is already clustered; strip the model first or cluster the original."
            )
    if not any(computes_on_kernel(layer) for layer in model.layers):
        raise ValueError(
            f"Model '{model.name}' has no Dense or convolution layer to cluster; `cluster_weights` "
            "clusters Dense, Conv1D/2D/3D and DepthwiseConv1D/2D kernels."
        )

    def clone_function(layer):
        copy = _copy(layer)
        if computes_on_kernel(copy):
            return ClusterWeights(
                copy,
                number_of_clusters=number_of_clusters,
                init=init,
                preserve_sparsity=preserve_sparsity,
                per_channel=per_channel,
            )
        return copy

    return keras.models.clone_model(model, clone_function=clone_function)


def strip_clustering(model: keras.Model) -> keras.Model:
    """A copy of a clustered model made of stock Keras layers whose kernels are the clustered ones.

    Args:
        model: a model from `cluster_weights`.

    Returns:
        The copy: same outputs as the clustered model, at most k distinct values per kernel (per
        channel with `per_channel`), plus 0 where sparsity was preserved.

    Example:

    ```python
    small = tfsparse.clustering.strip_clustering(clustered)
    small.save("clustered.keras")
    ```
    """
    model = _graph_model(model, "`strip_clustering`")

    def clone_function(layer):
        if not isinstance(layer, ClusterWeights):
            return _copy(layer)
        inner = layer.layer
        kernel = np.asarray(ops.convert_to_numpy(layer.clustered_kernel()))
        weights = [
            kernel if variable.path == inner.kernel.path else np.asarray(variable)
            for variable in inner.weights
        ]
        return _copy(inner, weights)

    return keras.models.clone_model(model, clone_function=clone_function)
