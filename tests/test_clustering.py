"""Weight clustering: k shared values per kernel, zeros kept, trained with fit(), stripped to plain Keras."""

import gzip
import os

import keras
import numpy as np
import pytest
from conftest import make_digits_cnn, make_mlp

import tfsparse
from tfsparse.clustering import ClusterWeights, UpdateClusterAssignments, cluster_weights, strip_clustering
from tfsparse.clustering.centroids import initial_centroids, nearest

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("init", ["kmeans++", "linear", "density"])
def test_initial_centroids_are_k_sorted_values_within_the_weights_range(init):
    values = np.random.default_rng(0).normal(size=2000)
    centroids = initial_centroids(values, 8, init)
    assert centroids.shape == (8,) and np.all(np.diff(centroids) >= 0)
    assert values.min() <= centroids.min() and centroids.max() <= values.max()


def test_linear_centroids_are_evenly_spaced_and_density_centroids_follow_the_distribution():
    values = np.concatenate([np.random.default_rng(0).normal(0, 0.01, 900), np.linspace(-1, 1, 100)])
    np.testing.assert_allclose(
        initial_centroids(values, 5, "linear"), np.linspace(values.min(), values.max(), 5), atol=1e-6
    )
    density = initial_centroids(values, 5, "density")
    assert np.sum(np.abs(density) < 0.05) >= 3  # most centroids where most weights are


def test_kmeans_plus_plus_finds_well_separated_clusters():
    values = np.concatenate([np.full(50, -1.0), np.full(50, 0.5), np.full(50, 2.0)]) + np.random.default_rng(
        0
    ).normal(0, 1e-3, 150)
    np.testing.assert_allclose(initial_centroids(values, 3, "kmeans++"), [-1.0, 0.5, 2.0], atol=1e-2)
    np.testing.assert_array_equal(nearest(np.array([-0.9, 0.4, 3.0]), np.array([-1.0, 0.5, 2.0])), [0, 1, 2])


@pytest.fixture(scope="module")
def pruned_mlp():
    """The tiny MLP with random weights, pruned to 60% by magnitude (clustering needs no training)."""
    keras.utils.set_random_seed(0)
    return tfsparse.prune_oneshot(make_mlp(), 0.6, criterion="magnitude")


def _kernels(model):
    return {layer.name: np.asarray(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")}


@pytest.mark.parametrize("per_channel", [False, True])
def test_fit_then_strip_leaves_at_most_k_values_per_kernel_and_keeps_zeros(tabular, pruned_mlp, per_channel):
    x, y = tabular
    pruned = pruned_mlp
    clustered = cluster_weights(pruned, number_of_clusters=4, init="linear", per_channel=per_channel)
    centroids_before = [np.asarray(w.centroids) for w in clustered.layers if isinstance(w, ClusterWeights)]
    clustered.compile(keras.optimizers.Adam(1e-2), LOSS)
    clustered.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[UpdateClusterAssignments(frequency=4)])
    stripped = strip_clustering(clustered)
    assert not any(isinstance(layer, ClusterWeights) for layer in stripped.layers)
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0))
    for name, kernel in _kernels(stripped).items():
        original = _kernels(pruned)[name]
        np.testing.assert_array_equal(kernel == 0, original == 0)  # zeros kept, none added
        columns = kernel.T if per_channel else [kernel]
        assert max(len(np.unique(column[column != 0])) for column in columns) <= 4
    centroids_after = [np.asarray(w.centroids) for w in clustered.layers if isinstance(w, ClusterWeights)]
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(centroids_after, centroids_before)), (
        "centroids did not train"
    )


def test_update_assignments_moves_values_to_the_nearest_trained_centroid(tabular, pruned_mlp):
    x, y = tabular
    clustered = cluster_weights(pruned_mlp, number_of_clusters=4)
    wrapper = clustered.layers[0]
    clustered.compile(keras.optimizers.Adam(5e-2), LOSS)
    clustered.fit(x, y, epochs=1, batch_size=32, verbose=0)  # no callback: assignments stay
    stale = np.asarray(wrapper.assignments).copy()
    wrapper.update_assignments()
    kernel, centroids = np.asarray(wrapper.layer.kernel), np.asarray(wrapper.centroids)[0]
    np.testing.assert_array_equal(np.asarray(wrapper.assignments), nearest(kernel, centroids))
    assert np.any(np.asarray(wrapper.assignments) != stale)


def test_without_preserve_sparsity_zeros_join_a_cluster(tabular, pruned_mlp):
    clustered = cluster_weights(pruned_mlp, number_of_clusters=3, preserve_sparsity=False)
    for kernel in _kernels(strip_clustering(clustered)).values():
        assert len(np.unique(kernel)) <= 3


def test_clustered_model_saves_and_loads_without_custom_objects(tabular, pruned_mlp, tmp_path):
    clustered = cluster_weights(pruned_mlp, number_of_clusters=4, per_channel=True)
    path = os.path.join(tmp_path, "clustered.keras")
    clustered.save(path)
    loaded = keras.saving.load_model(path)
    x = tabular[0][:8]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0))
    assert loaded.layers[0].get_config()["per_channel"] is True


def test_cluster_weights_rejects_bad_arguments(mlp):
    with pytest.raises(ValueError, match="number_of_clusters=1"):
        cluster_weights(mlp, number_of_clusters=1)
    with pytest.raises(ValueError, match="init='kmeans'"):
        cluster_weights(mlp, init="kmeans")
    with pytest.raises(ValueError, match="per_channel"):
        cluster_weights(mlp, per_channel=1)
    with pytest.raises(ValueError, match="already clustered"):
        cluster_weights(cluster_weights(mlp))
    with pytest.raises(ValueError, match="frequency"):
        UpdateClusterAssignments(frequency=0)


def test_clustered_tflite_files_gzip_smaller(digits):
    x, y = digits
    model = make_digits_cnn()
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    pruned = tfsparse.prune_oneshot(model, 0.8, criterion="magnitude")
    clustered = strip_clustering(cluster_weights(pruned, number_of_clusters=16))
    sizes = {}
    for quantize in (None, "int8"):
        for name, candidate in (("pruned", pruned), ("clustered", clustered)):
            flatbuffer = tfsparse.export.to_tflite(
                candidate, sparse=False, quantize=quantize, representative_data=x[:100]
            )
            sizes[name, quantize] = len(gzip.compress(flatbuffer, 9))
            report = tfsparse.analysis.tflite_sparsity_report(flatbuffer)
            kernels = [row for row in report.rows if len(row.shape) > 1]
            assert all(row.sparsity == pytest.approx(0.8, abs=0.01) for row in kernels)
    # float32: 16 distinct 4-byte values repeat, and gzip finds them.
    assert sizes["clustered", None] < 0.5 * sizes["pruned", None]
    # int8: the zeros' positions cost most of the compressed bytes; the values gain less.
    assert sizes["clustered", "int8"] < 0.92 * sizes["pruned", "int8"]


def test_dense_pruned_in_16_blocks_stays_sparse_in_the_clustered_int8_file():
    # int8 FULLY_CONNECTED weights in TFLite 1x16 blocks (Keras (16, 1)) are read sparse by the op,
    # so pruning, clustering and int8 multiply: the zeros cost no bytes and the values few.
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(128, 32)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int32")
    pruned = tfsparse.prune_low_magnitude(
        make_mlp(features=32), pruning_schedule=tfsparse.ConstantSparsity(0.75, 0), block_size=(16, 1)
    )
    pruned.compile(keras.optimizers.Adam(1e-3), LOSS)
    pruned.fit(x, y, epochs=1, batch_size=128, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    pruned = tfsparse.strip_pruning(pruned)
    clustered = cluster_weights(pruned, number_of_clusters=4)
    clustered.compile(keras.optimizers.Adam(1e-3), LOSS)
    clustered.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[UpdateClusterAssignments(2)])
    shared = strip_clustering(clustered)
    sizes = {}
    for name, model in (("pruned", pruned), ("clustered", shared)):
        flatbuffer = tfsparse.export.to_tflite(model, quantize="int8", representative_data=x[:64])
        sizes[name] = len(gzip.compress(flatbuffer, 9))
        report = tfsparse.analysis.tflite_sparsity_report(flatbuffer)
        kernels = [row for row in report.rows if row.dtype == "int8" and row.shape == (32, 32)]
        assert len(kernels) == 2 and all(row.encoding == "sparse" for row in kernels), report
        assert all(row.stored == 32 * 32 // 4 for row in kernels)  # only the kept blocks' values
    assert sizes["clustered"] < 0.9 * sizes["pruned"]
