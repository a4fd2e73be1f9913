"""`ClusterWeights`: a layer whose kernel takes at most k values (weight sharing), trained with fit().

The kernel the layer computes with is `centroids[assignments]` (times a fixed mask of the non-zeros
when sparsity is preserved). Centroids are trainable (each gets the summed gradient of the weights
in its cluster); the original kernel is kept, frozen, and `UpdateClusterAssignments` moves each
original value to its nearest centroid as the centroids move, on a schedule.

Training the original values as well (a straight-through gradient, as tfmot does) lets them drift
by many cluster widths between two updates when assignments are not recomputed every step; each
update then reshuffles the clusters at once, which cost the digits CNN 3 points at learning rate
1e-3. Frozen originals change a weight's cluster only when a centroid crosses the midpoint.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfsparse._kernels import call_with_kernel, computes_on_kernel, is_depthwise
from tfsparse.clustering.centroids import INITS, initial_centroids, nearest


def _channels(kernel: np.ndarray, layer) -> np.ndarray:
    """`kernel` as (values per channel, channels): output channels last (depthwise: in * multiplier)."""
    if is_depthwise(layer):
        return kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1])
    return kernel.reshape(-1, kernel.shape[-1])


@keras.saving.register_keras_serializable(package="tfsparse")
class ClusterWeights(keras.layers.Wrapper):
    """Wraps a Dense or convolution layer so that its kernel shares `number_of_clusters` values.

    Usually created by `tfsparse.clustering.cluster_weights`; the arguments are the same.

    Args:
        layer: a Dense, Conv1D/2D/3D or DepthwiseConv1D/2D layer.
        number_of_clusters: how many distinct values the kernel keeps (per channel with
            `per_channel`), at least 2.
        init: "kmeans++", "linear" or "density": where the centroids start.
        preserve_sparsity: keep zero weights at zero (they form no cluster of their own).
        per_channel: one set of centroids per output channel instead of one per kernel.
        **kwargs: `keras.layers.Wrapper` arguments (`name`, ...).

    Example:

    ```python
    clustered = tfsparse.clustering.ClusterWeights(keras.layers.Dense(10), number_of_clusters=8)
    ```
    """

    def __init__(
        self,
        layer,
        number_of_clusters: int = 16,
        init: str = "kmeans++",
        preserve_sparsity: bool = True,
        per_channel: bool = False,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer) or not computes_on_kernel(layer):
            raise ValueError(
                "Argument `layer` must be a Dense, Conv1D/2D/3D or DepthwiseConv1D/2D layer. "
                f"Received: layer={layer!r}"
            )
        check_arguments(number_of_clusters, init, preserve_sparsity, per_channel)
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.number_of_clusters = int(number_of_clusters)
        self.init = init
        self.preserve_sparsity = preserve_sparsity
        self.per_channel = per_channel

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.layer.kernel.trainable = False  # the centroids train instead (see the module docstring)
        kernel = np.asarray(ops.convert_to_numpy(self.layer.kernel))
        columns = _channels(kernel, self.layer)
        keep = columns != 0 if self.preserve_sparsity else np.ones_like(columns, dtype=bool)
        groups = [columns[:, c] for c in range(columns.shape[1])] if self.per_channel else [columns.ravel()]
        masks = [keep[:, c] for c in range(columns.shape[1])] if self.per_channel else [keep.ravel()]
        centroids = np.stack(
            [
                initial_centroids(values[mask], self.number_of_clusters, self.init)
                for values, mask in zip(groups, masks)
            ]
        )
        self.centroids = self.add_weight(
            name="cluster_centroids",
            shape=centroids.shape,
            initializer=keras.initializers.Constant(centroids),
            trainable=True,
        )
        self.assignments = self.add_weight(
            name="cluster_assignments",
            shape=kernel.shape,
            dtype="int32",
            initializer=keras.initializers.Constant(self._assign(kernel, centroids)),
            trainable=False,
        )
        if self.preserve_sparsity:
            self.kernel_mask = self.add_weight(
                name="kernel_mask",
                shape=kernel.shape,
                initializer=keras.initializers.Constant((kernel != 0).astype("float32")),
                trainable=False,
            )
        self.built = True

    def _assign(self, kernel: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """Each kernel value's nearest centroid, as an index into the flattened centroids."""
        columns = _channels(kernel, self.layer)
        if not self.per_channel:
            return nearest(kernel, centroids[0])
        indices = np.stack([nearest(columns[:, c], centroids[c]) for c in range(columns.shape[1])], axis=1)
        indices = indices + self.number_of_clusters * np.arange(columns.shape[1])[None, :]
        return indices.reshape(kernel.shape).astype("int32")

    def update_assignments(self) -> None:
        """Moves every kernel value to its nearest centroid (on the host, between training steps)."""
        kernel = np.asarray(ops.convert_to_numpy(self.layer.kernel))
        self.assignments.assign(self._assign(kernel, np.asarray(ops.convert_to_numpy(self.centroids))))

    def clustered_kernel(self):
        """The kernel the layer computes with: `centroids[assignments]`, masked when sparsity is kept."""
        kernel = ops.take(ops.reshape(self.centroids, (-1,)), self.assignments)
        if self.preserve_sparsity:
            kernel = kernel * ops.cast(self.kernel_mask, kernel.dtype)
        return kernel

    def call(self, inputs, training=None):
        return call_with_kernel(self.layer, inputs, self.clustered_kernel())

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "number_of_clusters": self.number_of_clusters,
            "init": self.init,
            "preserve_sparsity": self.preserve_sparsity,
            "per_channel": self.per_channel,
        }


def check_arguments(number_of_clusters, init, preserve_sparsity, per_channel) -> None:
    """ValueErrors naming the argument, for `cluster_weights` and `ClusterWeights`."""
    if (
        isinstance(number_of_clusters, bool)
        or not isinstance(number_of_clusters, (int, np.integer))
        or number_of_clusters < 2
    ):
        raise ValueError(
            f"Argument `number_of_clusters` must be an integer of at least 2. Received: number_of_clusters={number_of_clusters!r}"
        )
    if init not in INITS:
        raise ValueError(f"Argument `init` must be one of {INITS}. Received: init={init!r}")
    for name, value in (("preserve_sparsity", preserve_sparsity), ("per_channel", per_channel)):
        if not isinstance(value, bool):
            raise ValueError(f"Argument `{name}` must be True or False. Received: {name}={value!r}")
