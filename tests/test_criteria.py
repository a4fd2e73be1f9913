import keras
import numpy as np
import pytest
from conftest import make_mlp

import tfsparse
from tfsparse import _gradients, criteria, mask_updates
from tfsparse.calibration import Calibration


def _dense(kernel: np.ndarray, **arguments) -> tfsparse.PruneLowMagnitude:
    """A pruned linear model `x @ kernel` (no bias) with the given kernel."""
    model = keras.Sequential(
        [keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1], use_bias=False)]
    )
    model.layers[0].set_weights([kernel.astype("float32")])
    return tfsparse.prune_low_magnitude(model, **arguments)


def _masks(model):
    return [w.get_masks()[0] for w in mask_updates.collect_wrappers(model)]


@pytest.mark.parametrize("name", criteria.NAMES)
def test_every_criterion_reaches_the_scheduled_sparsity_in_fit(name, tabular):
    x, y = tabular
    pruned = tfsparse.prune_low_magnitude(
        make_mlp(), pruning_schedule=tfsparse.PolynomialDecay(0.0, 0.75, 0, 16, frequency=8), criterion=name
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(
        x,
        y,
        epochs=3,
        batch_size=32,
        verbose=0,
        callbacks=[tfsparse.UpdatePruningStep(calibration_data=(x, y))],
    )
    for mask in _masks(pruned):
        assert (mask == 0).sum() == round(0.75 * mask.size)


def test_taylor_keeps_a_small_weight_with_a_large_gradient_that_magnitude_drops():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32") * np.array([100.0, 1.0, 1.0, 1.0], dtype="float32")
    y = rng.normal(size=(256, 1)).astype("float32")
    kernel = np.array([[0.05], [0.5], [0.6], [0.7]])
    kept = {}
    for name in ("magnitude", "taylor"):
        model = _dense(kernel, criterion=name)
        calibration = Calibration(model, (x, y), batches=4, loss="mse")
        mask_updates.prune_to(mask_updates.collect_wrappers(model), lambda w: 0.25, calibration)
        kept[name] = _masks(model)[0][:, 0]
    assert kept["magnitude"].tolist() == [0, 1, 1, 1]
    assert kept["taylor"][0] == 1 and kept["taylor"].sum() == 3


def test_taylor_gradients_match_the_analytic_gradient_of_a_linear_model():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    kernel = rng.normal(size=(3, 2))
    model = _dense(kernel)
    wrapper = mask_updates.collect_wrappers(model)[0]
    calibration = Calibration(model, [(x, y)], loss="mse")
    (gradient,) = calibration.gradient_magnitudes(wrapper.pruned_weights)
    expected = np.abs(x.T @ (2.0 * (x @ kernel - y)) / y.size)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4)


def _pulled_and_pushed(kernel, target, samples=512):
    """Whitened inputs and targets of the linear model `x @ target`, as one calibration batch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, kernel.shape[0]))
    x = (x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / samples)).T).astype("float32")  # x.T x / n = I
    return x, (x @ target).astype("float32")


def test_movement_keeps_the_weights_the_loss_pushes_away_from_zero():
    # The loss pulls the two large weights toward zero (their target is 0) and pushes the two
    # small ones outward: -g * w is negative for the first two, positive for the others.
    kernel = np.array([[1.0], [0.9], [0.2], [0.1]])
    x, y = _pulled_and_pushed(kernel, np.array([[0.0], [0.0], [0.6], [0.5]]))
    kept = {}
    for name in ("magnitude", "movement"):
        model = _dense(kernel, criterion=name)
        wrappers = mask_updates.collect_wrappers(model)
        mask_updates.prune_to(wrappers, lambda w: 0.5, Calibration(model, [(x, y)], loss="mse"))
        kept[name] = _masks(model)[0][:, 0].tolist()
    assert kept == {"magnitude": [1, 1, 0, 0], "movement": [0, 0, 1, 1]}
    # With whitened inputs the MSE gradient is 2 (w - target): the score is -2 (w - target) w.
    expected = -2.0 * (kernel - np.array([[0.0], [0.0], [0.6], [0.5]])) * kernel
    np.testing.assert_allclose(wrappers[0].get_movement_scores()[0], expected, atol=1e-4)


def test_movement_sums_its_score_over_mask_updates_and_brings_back_a_weight_whose_score_rises():
    kernel = np.array([[1.0], [0.9], [0.5], [0.4]])
    first_target = np.array([[1.5], [0.0], [0.5], [0.0]])
    model = _dense(kernel, criterion="movement")
    wrappers = mask_updates.collect_wrappers(model)
    x, y = _pulled_and_pushed(kernel, first_target)
    mask_updates.prune_to(wrappers, lambda w: 0.25, Calibration(model, [(x, y)], loss="mse"))
    first = -2.0 * (kernel - first_target) * kernel  # 1.0, -1.62, 0, -0.32
    np.testing.assert_allclose(wrappers[0].get_movement_scores()[0], first, atol=1e-4)
    assert _masks(model)[0][:, 0].tolist() == [1, 0, 1, 1]
    # Now the loss wants the pruned weight back (straight-through: its gradient is taken at the
    # masked weight, zero, and multiplies its value when pruned, 0.9).
    second_target = np.array([[1.5], [3.0], [0.5], [0.0]])
    x, y = _pulled_and_pushed(kernel, second_target)
    mask_updates.prune_to(wrappers, lambda w: 0.25, Calibration(model, [(x, y)], loss="mse"))
    masked = kernel * np.array([[1], [0], [1], [1]])
    second = -2.0 * (masked - second_target) * kernel  # 1.0, 5.4, 0, -0.32
    np.testing.assert_allclose(wrappers[0].get_movement_scores()[0], first + second, atol=1e-4)
    assert _masks(model)[0][:, 0].tolist() == [1, 1, 1, 0]
    np.testing.assert_allclose(wrappers[0].get_pruned_weight_values()[0], [[1.0], [0.9], [0.5], [0.0]])


def test_movement_refuses_regrowth_since_it_brings_weights_back_itself():
    with pytest.raises(ValueError, match="Criterion 'movement' already brings back pruned weights"):
        tfsparse.prune_low_magnitude(make_mlp(), criterion="movement", regrowth="set")


def test_movement_without_calibration_data_is_refused():
    model = _dense(np.ones((4, 1)), criterion="movement")
    with pytest.raises(ValueError, match=r"criterion 'movement'.*calibration_data=\(x, y\)"):
        mask_updates.prune_to(mask_updates.collect_wrappers(model), lambda w: 0.5)


def _two_layer_scores(scale_small: float):
    """Two layers of the same shape of distribution, one much quieter than the other."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(10, use_bias=False)(inputs)
    outputs = keras.layers.Dense(10, use_bias=False)(hidden)
    model = keras.Model(inputs, outputs)
    spread = rng.uniform(0.1, 1.0, size=(10, 10)).astype("float32")
    model.layers[1].set_weights([spread * scale_small])
    model.layers[2].set_weights([spread])
    return model


def test_global_scope_prunes_a_quiet_layer_first_and_lamp_balances_it():
    plain = tfsparse.prune_low_magnitude(
        _two_layer_scores(0.01), tfsparse.ConstantSparsity(0.5, 0), scope="global", min_density=0.0
    )
    quiet_name = mask_updates.collect_wrappers(plain)[0].name
    with pytest.warns(UserWarning, match=f"Layer '{quiet_name}' has every weight"):
        mask_updates.update_masks(mask_updates.collect_wrappers(plain), 0)
    quiet, loud = _masks(plain)
    assert (quiet == 0).mean() == 1.0 and (loud == 0).mean() == 0.0
    lamp = tfsparse.prune_low_magnitude(
        _two_layer_scores(0.01), tfsparse.ConstantSparsity(0.5, 0), scope="global", score_normalization="lamp"
    )
    mask_updates.update_masks(mask_updates.collect_wrappers(lamp), 0)
    quiet, loud = _masks(lamp)
    assert (quiet == 0).sum() + (loud == 0).sum() == 100
    assert 0.3 < (quiet == 0).mean() < 0.7 and quiet.max() == 1.0


def test_global_scope_keeps_the_minimum_density_of_every_layer():
    pruned = tfsparse.prune_low_magnitude(
        _two_layer_scores(0.01), tfsparse.ConstantSparsity(0.5, 0), scope="global", min_density=0.2
    )
    mask_updates.update_masks(mask_updates.collect_wrappers(pruned), 0)
    quiet, loud = _masks(pruned)
    assert quiet.mean() == pytest.approx(0.2)
    assert (quiet == 0).sum() + (loud == 0).sum() == 100


def test_lamp_keeps_each_layers_order_and_scores_its_largest_weight_one():
    scores = np.array([[0.5, 2.0], [1.0, 2.0]])
    normalized = criteria.lamp(scores)
    np.testing.assert_allclose(normalized, [[0.25 / 9.25, 4.0 / 8.0], [1.0 / 9.0, 1.0]])
    assert np.isneginf(criteria.lamp(np.array([-np.inf, 1.0]))[0])


def test_lamp_with_a_signed_criterion_is_refused():
    with pytest.raises(ValueError, match="score_normalization='lamp'.*'movement'"):
        tfsparse.prune_low_magnitude(make_mlp(), criterion="movement", score_normalization="lamp")
    with pytest.raises(ValueError, match=r"`min_density` must be in \[0, 1\]. Received: min_density=2"):
        tfsparse.prune_low_magnitude(make_mlp(), min_density=2)


def test_an_unknown_criterion_is_refused_with_the_choices():
    with pytest.raises(
        ValueError, match=r"`criterion` must be one of \['magnitude', 'movement', 'taylor', 'wanda'\]"
    ):
        tfsparse.prune_low_magnitude(make_mlp(), criterion="random")


def test_data_criteria_without_calibration_data_are_refused_at_train_begin(tabular):
    x, y = tabular
    pruned = tfsparse.prune_low_magnitude(make_mlp(), criterion="taylor")
    pruned.compile("adam", "mse")
    with pytest.raises(ValueError, match=r"calibration_data=\(x, y\)"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])


def test_criterion_state_and_settings_survive_a_saved_model(tmp_path, tabular):
    x, y = tabular
    pruned = tfsparse.prune_low_magnitude(make_mlp(), criterion="movement", scope="global", min_density=0.1)
    wrappers = mask_updates.collect_wrappers(pruned)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    mask_updates.prune_to(wrappers, lambda w: 0.5, Calibration(pruned, (x, y), loss=loss))
    pruned.save(tmp_path / "movement.keras")
    loaded = mask_updates.collect_wrappers(keras.saving.load_model(tmp_path / "movement.keras"))
    assert [(w.criterion, w.scope, w.min_density) for w in loaded] == [("movement", "global", 0.1)] * 3
    for before, after in zip(wrappers, loaded):
        assert np.count_nonzero(before.get_movement_scores()[0]) > 0
        np.testing.assert_array_equal(before.get_movement_scores()[0], after.get_movement_scores()[0])


def test_input_norms_are_the_l2_norms_of_each_input_feature_and_channel():
    rng = np.random.default_rng(0)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(x))
    pruned = tfsparse.prune_low_magnitude(keras.Model(inputs, outputs))
    data = rng.normal(size=(20, 4, 4, 3)).astype("float32")
    wrappers = mask_updates.collect_wrappers(pruned)
    norms = Calibration(pruned, data, batches=None, batch_size=8).input_norms(wrappers)
    np.testing.assert_allclose(norms[id(wrappers[0])], np.sqrt((data**2).sum(axis=(0, 1, 2))), rtol=1e-5)
    assert norms[id(wrappers[1])].shape == (32,)


@pytest.mark.parametrize("name, expected_calls", [("magnitude", 0), ("taylor", 3), ("movement", 3)])
def test_gradients_are_computed_only_at_mask_updates(name, expected_calls, tabular, monkeypatch):
    x, y = tabular
    calls = []
    original = _gradients.gradient_sums
    monkeypatch.setattr(_gradients, "gradient_sums", lambda *a, **k: calls.append(1) or original(*a, **k))
    pruned = tfsparse.prune_low_magnitude(
        make_mlp(), pruning_schedule=tfsparse.PolynomialDecay(0.0, 0.5, 0, 16, frequency=8), criterion=name
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    step_callback = tfsparse.UpdatePruningStep(calibration_data=(x, y))
    pruned.fit(
        x, y, epochs=3, batch_size=32, verbose=0, callbacks=[step_callback]
    )  # 24 steps, updates at 0, 8, 16
    assert len(calls) == expected_calls


def test_movement_masks_differ_from_magnitude_when_pruning_begins_after_training_starts(tabular):
    # The only mask update comes at step 10: movement scores -g * w there, not |w|.
    x, y = tabular
    masks = {}
    for name in ("magnitude", "movement"):
        keras.utils.set_random_seed(0)
        model = make_mlp()
        pruned = tfsparse.prune_low_magnitude(
            model, pruning_schedule=tfsparse.ConstantSparsity(0.7, begin_step=10), criterion=name
        )
        pruned.compile(
            keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        pruned.fit(
            x,
            y,
            epochs=1,
            batch_size=16,
            verbose=0,
            shuffle=False,
            callbacks=[tfsparse.UpdatePruningStep(calibration_data=(x, y))],
        )
        masks[name] = _masks(pruned)
    for magnitude, movement in zip(masks["magnitude"], masks["movement"]):
        assert (movement == 0).sum() == (magnitude == 0).sum() == round(0.7 * magnitude.size)
        assert (movement != magnitude).mean() > 0.05
