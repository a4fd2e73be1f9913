"""Low-rank factorization: Dense, 1x1 convolution and EinsumDense kernels split in two by SVD."""

import keras
import numpy as np
import pytest

from tfsparse.lowrank import choose_rank, factorize, split_kernel


def _mixed_model():
    inputs = keras.Input((6, 6, 8))
    x = keras.layers.Conv2D(16, 1, strides=2, activation="relu", name="pointwise")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv3x3")(x)
    x = keras.layers.Reshape((9, 8))(x)
    x = keras.layers.EinsumDense(
        "abc,cd->abd", output_shape=(9, 12), bias_axes="d", activation="relu", name="einsum"
    )(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="mixed")


def test_full_energy_keeps_outputs_and_names_with_ordinary_layers():
    model = _mixed_model()
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 8)).astype("float32")
    result = factorize(model, energy=1.0)
    assert [row.name for row in result.layers] == ["pointwise", "einsum", "hidden", "logits"]
    np.testing.assert_allclose(result.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    names = [layer.name for layer in result.model.layers]
    assert names.index("hidden_lowrank") + 1 == names.index("hidden")
    assert {type(layer).__module__.split(".")[0] for layer in result.model.layers} == {"keras"}
    assert result.model.get_layer("pointwise_lowrank").strides == (2, 2)  # the first keeps the stride
    assert result.model.get_layer("conv3x3").count_params() == model.get_layer("conv3x3").count_params()


def test_rank_r_is_the_best_rank_r_approximation_and_the_report_counts_it():
    model = _mixed_model()
    result = factorize(model, rank=3, layers=["hidden"])
    kernel = np.asarray(model.get_layer("hidden").kernel)
    a = np.asarray(result.model.get_layer("hidden_lowrank").kernel)
    b = np.asarray(result.model.get_layer("hidden").kernel)
    singular = np.linalg.svd(kernel, compute_uv=False)
    assert np.linalg.norm(kernel - a @ b) == pytest.approx(np.sqrt(np.sum(singular[3:] ** 2)), rel=1e-4)
    (row,) = result.layers
    assert (row.rank, row.kernel_shape) == (3, (108, 32))
    assert row.energy == pytest.approx(np.sum(singular[:3] ** 2) / np.sum(singular**2), rel=1e-5)
    assert (row.parameters_before, row.parameters_after) == (108 * 32 + 32, 3 * (108 + 32) + 32)
    assert (row.flops_before, row.flops_after) == (2 * 108 * 32 + 32, 2 * 3 * (108 + 32) + 32)
    assert row.parameters_saved == 3488 - 452
    assert "hidden" in result.table()


def test_energy_keeps_the_fewest_singular_values_that_hold_it():
    singular = np.array([3.0, 2.0, 1.0, 0.5])  # squares: 9, 4, 1, 0.25 of 14.25
    assert [choose_rank(singular, None, e) for e in (0.5, 0.65, 0.92, 0.99, 1.0)] == [1, 2, 3, 4, 4]
    assert choose_rank(singular, 10, None) == 4
    a, b, kept = split_kernel(np.diag(singular).astype("float32"), None, 0.9)
    assert a.shape == (4, 2) and b.shape == (2, 4) and kept == pytest.approx(13 / 14.25)


def test_factorized_model_trains_saves_and_loads(tmp_path):
    model = _mixed_model()
    result = factorize(model, rank=2)
    result.model.compile("adam", "mse")
    x = np.random.default_rng(1).normal(size=(16, 6, 6, 8)).astype("float32")
    result.model.fit(x, np.zeros((16, 5)), epochs=1, verbose=0)
    path = str(tmp_path / "lowrank.keras")
    result.model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0))


def test_factorize_rejects_bad_arguments():
    model = _mixed_model()
    with pytest.raises(ValueError, match="exactly one of `rank` and `energy`"):
        factorize(model)
    with pytest.raises(ValueError, match="exactly one of `rank` and `energy`"):
        factorize(model, rank=2, energy=0.9)
    with pytest.raises(ValueError, match="energy=0"):
        factorize(model, energy=0)
    with pytest.raises(ValueError, match="rank=0"):
        factorize(model, rank=0)
    with pytest.raises(ValueError, match="'nope', which is not a layer"):
        factorize(model, rank=2, layers=["nope"])
    with pytest.raises(ValueError, match="Layer 'conv3x3' \\(Conv2D\\) cannot be factorized"):
        factorize(model, rank=2, layers=["conv3x3"])
