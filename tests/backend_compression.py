"""QAT and clustering of a tiny pruned CNN on the Keras backend named by KERAS_BACKEND.

Prints one JSON line of facts; run in its own process, since the backend is fixed at import.
"""

import json

import keras
import numpy as np

import tfsparse
from tfsparse.clustering import UpdateClusterAssignments, cluster_weights, strip_clustering
from tfsparse.quantization import QuantizeWrapper, quantize_aware


def _model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _kernels(model):
    return [np.asarray(layer.layer.kernel) for layer in model.layers if hasattr(layer, "layer")]


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((128, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 128)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pruned = tfsparse.prune_oneshot(_model(), 0.7, criterion="magnitude")
    facts = {"backend": keras.backend.backend()}

    qat = quantize_aware(pruned)
    before = _kernels(qat)
    qat.compile("adam", loss)
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    after = _kernels(qat)
    facts["qat_zeros_kept"] = all(bool(np.all(a[b == 0] == 0)) for a, b in zip(after, before))
    facts["qat_trained"] = all(float(np.abs(a - b).max()) > 1e-4 for a, b in zip(after, before))
    facts["qat_ranges"] = [
        [float(np.asarray(layer.output_range.minimum)), float(np.asarray(layer.output_range.maximum))]
        for layer in qat.layers
        if isinstance(layer, QuantizeWrapper)
    ]

    clustered = cluster_weights(pruned, number_of_clusters=4)
    clustered.compile("adam", loss)
    clustered.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[UpdateClusterAssignments(2)])
    stripped = strip_clustering(clustered)
    kernels = [np.asarray(layer.kernel) for layer in stripped.layers if hasattr(layer, "kernel")]
    facts["cluster_values"] = [len(np.unique(kernel[kernel != 0])) for kernel in kernels]
    facts["cluster_sparsity"] = [float(np.mean(kernel == 0)) for kernel in kernels]
    facts["strip_max_difference"] = float(
        np.abs(stripped.predict(x, verbose=0) - clustered.predict(x, verbose=0)).max()
    )
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
