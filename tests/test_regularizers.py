import keras
import numpy as np
import pytest
from conftest import make_mlp

import tfsparse
from tfsparse import mask_updates, regularizers

RAMP = regularizers.RampSchedule(1e-3, begin_step=10, ramp_end_step=20, end_step=30)
REGULARIZERS = {
    "l1": regularizers.L1(1e-3),
    "l2": regularizers.L2(RAMP),
    "elastic_net": regularizers.ElasticNet(1e-3, l1_ratio=0.3),
    "group_lasso": regularizers.GroupLasso(
        keras.optimizers.schedules.ExponentialDecay(1e-3, 100, 0.5), "rows"
    ),
}


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_config_round_trips(name):
    regularizer = REGULARIZERS[name]
    serialized = keras.saving.serialize_keras_object(regularizer)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(regularizer)
    assert restored.get_config() == regularizer.get_config()
    weight = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype("float32")
    for step in (0, 15, 50):
        assert float(restored(weight, step)) == pytest.approx(float(regularizer(weight, step)))


def test_penalties_have_their_textbook_values():
    w = np.array([[3.0, -4.0], [0.0, 0.0], [1.0, 0.0]], dtype="float32")
    assert float(regularizers.L1(2.0)(w)) == pytest.approx(2.0 * 8.0)
    assert float(regularizers.L2(2.0)(w)) == pytest.approx(2.0 * 26.0)
    assert float(regularizers.ElasticNet(1.0, l1_ratio=0.25)(w)) == pytest.approx(0.25 * 8 + 0.75 * 26)
    # rows: norms 5, 0, 1 over groups of 2; columns: norms sqrt(10), 4 over groups of 3.
    assert float(regularizers.GroupLasso(1.0, "rows")(w)) == pytest.approx(np.sqrt(2) * 6.0, rel=1e-5)
    assert float(regularizers.GroupLasso(1.0, "columns")(w)) == pytest.approx(np.sqrt(3) * (np.sqrt(10) + 4))
    # filters of a conv kernel (kh, kw, in, out): one group per (in, out) pair over the window.
    kernel = np.ones((3, 3, 2, 4), dtype="float32")
    assert float(regularizers.GroupLasso(1.0, "filters")(kernel)) == pytest.approx(8 * 3.0 * 3.0, rel=1e-5)


def test_ramp_schedule_ramps_up_holds_then_switches_off():
    values = [float(RAMP(step)) for step in (0, 10, 15, 20, 25, 30, 31)]
    np.testing.assert_allclose(values, [0, 0, 5e-4, 1e-3, 1e-3, 1e-3, 0], atol=1e-9)


def _regularized_model(regularizer, features=4):
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(3)])
    return tfsparse.prune_low_magnitude(model, regularizer=regularizer)


def test_the_added_loss_follows_the_strength_schedule_of_the_pruning_step():
    pruned = _regularized_model(regularizers.L1(RAMP))
    wrapper = mask_updates.collect_wrappers(pruned)[0]
    kernel_l1 = float(np.abs(wrapper.get_pruned_weight_values()[0]).sum())
    x = np.ones((2, 4), dtype="float32")
    for step in (5, 15, 25, 40):
        wrapper.pruning_step.assign(step)
        pruned(x)
        (loss,) = pruned.losses
        assert float(loss) == pytest.approx(float(RAMP(step)) * kernel_l1, rel=1e-5)


def test_fit_adds_the_penalty_to_the_reported_loss(tabular):
    x, y = tabular
    losses = {}
    for name, regularizer in (("none", None), ("l2", regularizers.L2(1.0))):
        keras.utils.set_random_seed(0)
        pruned = tfsparse.prune_low_magnitude(
            make_mlp(), tfsparse.ConstantSparsity(0.0, 0), regularizer=regularizer
        )
        pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses[name] = pruned.evaluate(x, y, verbose=0)
    assert losses["l2"] > losses["none"] + 1.0


def _train(regularizer, x, y, epochs=25):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)]
    )
    pruned = tfsparse.prune_low_magnitude(
        model, tfsparse.ConstantSparsity(0.0, 0, end_step=0), regularizer=regularizer
    )
    pruned.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    return mask_updates.collect_wrappers(pruned)[0].get_pruned_weight_values()[0]


def test_l1_raises_the_share_of_near_zero_weights(tabular):
    x, y = tabular
    plain = _train(None, x, y)
    sparse = _train(regularizers.L1(2e-2), x, y)
    near_zero = lambda kernel: float(np.mean(np.abs(kernel) < 1e-2))  # noqa: E731
    assert near_zero(sparse) > near_zero(plain) + 0.3


def test_group_lasso_zeroes_whole_groups_more_than_l2(tabular):
    x, y = tabular
    # Only 4 of the 16 inputs carry the label: group lasso on rows should silence the other inputs.
    grouped = _train(regularizers.GroupLasso(3e-2, "rows"), x, y)
    squared = _train(regularizers.L2(3e-2), x, y)
    dead_rows = lambda kernel: int(np.sum(np.linalg.norm(kernel, axis=1) < 0.05))  # noqa: E731
    assert dead_rows(grouped) >= dead_rows(squared) + 6


def test_regularizer_survives_a_saved_model_and_is_dropped_by_strip(tmp_path):
    pruned = _regularized_model(regularizers.GroupLasso(RAMP, "columns"))
    pruned.save(tmp_path / "regularized.keras")
    loaded = keras.saving.load_model(tmp_path / "regularized.keras")
    wrapper = mask_updates.collect_wrappers(loaded)[0]
    assert isinstance(wrapper.regularizer, regularizers.GroupLasso)
    assert (
        wrapper.regularizer.get_config() == mask_updates.collect_wrappers(pruned)[0].regularizer.get_config()
    )
    x = np.ones((2, 4), dtype="float32")
    wrapper.pruning_step.assign(20)
    loaded(x)
    assert len(loaded.losses) == 1 and float(loaded.losses[0]) > 0
    stripped = tfsparse.strip_pruning(loaded)
    stripped(x)
    assert stripped.losses == []
    assert type(stripped.layers[0]) is keras.layers.Dense
    assert "GroupLasso" not in str(stripped.get_config())


def test_bad_regularizer_arguments_are_refused():
    with pytest.raises(ValueError, match="`regularizer` must be None or a `tfsparse.regularizers`"):
        _regularized_model(keras.regularizers.L1(0.1))
    with pytest.raises(ValueError, match=r"`strength` must be a finite number >= 0. Received: strength=-1"):
        regularizers.L1(-1)
    with pytest.raises(ValueError, match=r"`groups` must be one of \('rows', 'columns', 'filters'\)"):
        regularizers.GroupLasso(1e-3, groups="channels")
    with pytest.raises(ValueError, match="`l1_ratio` must be in"):
        regularizers.ElasticNet(1e-3, l1_ratio=2.0)
    with pytest.raises(ValueError, match="`end_step` must be -1 or >= `ramp_end_step`"):
        regularizers.RampSchedule(1e-3, begin_step=0, ramp_end_step=10, end_step=5)
