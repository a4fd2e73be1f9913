import keras
import numpy as np
import pytest
from conftest import make_mlp

import tfsparse
from tfsparse import mask_updates, masking


def _loud_and_quiet_inputs():
    """A linear layer on 16 inputs, two of every four 100 times louder than the other two."""
    rng = np.random.default_rng(0)
    scales = np.concatenate([rng.permutation([10.0, 10.0, 0.1, 0.1]) for _ in range(4)]).astype("float32")
    x = rng.normal(size=(512, 16)).astype("float32") * scales
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    return model, x[:256], x[256:]


def _output_error(model, pruned, x):
    return float(np.mean((model.predict(x, verbose=0) - pruned.predict(x, verbose=0)) ** 2))


@pytest.mark.parametrize("sparsity_m_by_n", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_wanda_beats_magnitude_output_error_on_inputs_of_very_different_scales(sparsity_m_by_n):
    model, calibration, held_out = _loud_and_quiet_inputs()
    errors = {}
    for criterion in ("magnitude", "wanda"):
        pruned = tfsparse.prune_oneshot(
            model, 0.5, calibration, criterion=criterion, sparsity_m_by_n=sparsity_m_by_n
        )
        kernel = pruned.layers[0].get_weights()[0]
        if sparsity_m_by_n is None:
            assert (kernel == 0).sum() == kernel.size // 2
        else:
            assert np.all((kernel.reshape(4, 4, 8) == 0).sum(axis=1) == 2)
        errors[criterion] = _output_error(model, pruned, held_out)
    assert errors["wanda"] < 0.2 * errors["magnitude"]


def test_prune_oneshot_returns_a_plain_model_or_the_pruned_one_with_equal_outputs():
    model, calibration, held_out = _loud_and_quiet_inputs()
    plain = tfsparse.prune_oneshot(model, 0.75, calibration)
    pruned = tfsparse.prune_oneshot(model, 0.75, calibration, strip=False)
    assert type(plain.layers[0]) is keras.layers.Dense
    assert isinstance(pruned.layers[0], tfsparse.PruneLowMagnitude)
    np.testing.assert_allclose(
        plain.predict(held_out, verbose=0), pruned.predict(held_out, verbose=0), atol=1e-5
    )
    assert model.layers[0].get_weights()[0].min() != 0  # the original is untouched


def test_prune_oneshot_with_taylor_uses_labels_and_the_compiled_loss(tabular):
    x, y = tabular
    model = make_mlp()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned = tfsparse.prune_oneshot(model, 0.6, (x, y), criterion="taylor", scope="global")
    kernels = [layer.get_weights()[0] for layer in pruned.layers]
    zeros = sum(int((k == 0).sum()) for k in kernels)
    assert zeros == round(0.6 * sum(k.size for k in kernels))
    assert len({round(float((k == 0).mean()), 2) for k in kernels}) > 1


def test_prune_oneshot_refuses_bad_arguments():
    model, calibration, _ = _loud_and_quiet_inputs()
    with pytest.raises(ValueError, match="Argument `data` is needed by criterion 'wanda'"):
        tfsparse.prune_oneshot(model, 0.5, None)
    with pytest.raises(ValueError, match=r"`sparsity` must be in \[0, 1\). Received: sparsity=1.5"):
        tfsparse.prune_oneshot(model, 1.5, calibration)
    with pytest.raises(ValueError, match="Received: criterion='movement'"):
        tfsparse.prune_oneshot(model, 0.5, calibration, criterion="movement")


def test_prune_by_threshold_masks_small_weights_and_reports_each_layer():
    pruned = tfsparse.prune_low_magnitude(make_mlp(), tfsparse.ConstantSparsity(0.0, 0, end_step=0))
    wrappers = mask_updates.collect_wrappers(pruned)
    rng = np.random.default_rng(0)
    for wrapper, share in zip(wrappers, (0.9, 0.5, 0.0)):
        shape = wrapper.pruned_weights[0].shape
        small = rng.random(shape) < share
        wrapper.pruned_weights[0].assign(np.where(small, 1e-4, 1.0).astype("float32"))
    report = tfsparse.prune_by_threshold(pruned, threshold=1e-3)
    assert list(report) == [w.name for w in wrappers]
    for wrapper, reached in zip(wrappers, report.values()):
        values = wrapper.get_pruned_weight_values()[0]
        assert reached == pytest.approx(float((values == 0).mean()))
        assert np.all(np.abs(values[values != 0]) >= 1e-3)
    assert report[wrappers[0].name] > 0.8 and report[wrappers[2].name] == 0.0


def test_prune_by_threshold_to_a_sparsity_follows_the_scope():
    pruned = tfsparse.prune_low_magnitude(make_mlp(), scope="global")
    report = tfsparse.prune_by_threshold(pruned, sparsity=0.8)
    sizes = [int(np.prod(w.pruned_weights[0].shape)) for w in mask_updates.collect_wrappers(pruned)]
    total = sum(reached * size for reached, size in zip(report.values(), sizes)) / sum(sizes)
    assert total == pytest.approx(0.8, abs=1e-3)
    assert len(set(report.values())) > 1
    with pytest.raises(ValueError, match="exactly one of the arguments `threshold` and `sparsity`"):
        tfsparse.prune_by_threshold(pruned)
    with pytest.raises(ValueError, match="has no pruned layers"):
        tfsparse.prune_by_threshold(make_mlp(), threshold=0.1)


def _two_dense_layers():
    rng = np.random.default_rng(3)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(24, activation="relu"), keras.layers.Dense(6)]
    )
    x = (rng.normal(size=(256, 16)) * rng.uniform(0.1, 5.0, size=16)).astype("float32")
    return model, x


def test_sequential_wanda_scores_each_layer_on_the_inputs_of_the_already_pruned_layers():
    model, x = _two_dense_layers()
    sequential = tfsparse.prune_oneshot(model, 0.6, x)
    one_pass = tfsparse.prune_oneshot(model, 0.6, x, sequential=False)
    (first, bias), (second, _) = (layer.get_weights() for layer in sequential.layers)
    np.testing.assert_array_equal(first, one_pass.layers[0].get_weights()[0])
    # The second layer's input norms come from the first layer as pruned.
    norms = np.sqrt(np.sum(np.maximum(x @ first + bias, 0.0) ** 2, axis=0))
    scores = np.abs(model.layers[1].get_weights()[0]) * norms[:, None]
    expected = masking.sparsity_mask(scores, 0.6)
    np.testing.assert_array_equal(second != 0, expected == 1)
    assert np.any((one_pass.layers[1].get_weights()[0] != 0) != (expected == 1))


def test_num_batches_calibrates_on_the_first_batches_of_an_endless_generator():
    model, x = _two_dense_layers()

    def endless():
        while True:
            for start in range(0, len(x), 32):
                yield x[start : start + 32]

    streamed = tfsparse.prune_oneshot(model, 0.6, endless(), num_batches=4)
    from_arrays = tfsparse.prune_oneshot(model, 0.6, x[:128])
    for a, b in zip(streamed.get_weights(), from_arrays.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(
        tfsparse.prune_oneshot(model, 0.6, x).layers[1].get_weights()[0], streamed.layers[1].get_weights()[0]
    )


def test_an_endless_dataset_without_num_batches_is_refused():
    import tensorflow as tf

    model, x = _two_dense_layers()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(32).repeat()
    with pytest.raises(ValueError, match="num_batches"):
        tfsparse.prune_oneshot(model, 0.6, dataset)
    pruned = tfsparse.prune_oneshot(model, 0.6, dataset, num_batches=2)
    assert (pruned.layers[0].get_weights()[0] == 0).mean() == pytest.approx(0.6, abs=0.01)
    with pytest.raises(ValueError, match="num_batches=0"):
        tfsparse.prune_oneshot(model, 0.6, x, num_batches=0)
