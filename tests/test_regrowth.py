import json

import keras
import numpy as np
import pytest
from conftest import make_digits_cnn, make_mlp

import tfsparse
from tfsparse import mask_updates, regrowth
from tfsparse.calibration import Calibration
from tfsparse.mask_updates import collect_wrappers


def _compiled(model, learning_rate=1e-2):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class _MaskRecorder(keras.callbacks.Callback):
    """After `UpdatePruningStep` ran at a batch's start: each layer's masks and stored weights."""

    def __init__(self):
        super().__init__()
        self.masks, self.values = [], []

    def on_train_batch_begin(self, batch, logs=None):
        wrappers = collect_wrappers(self.model)
        self.masks.append([w.get_masks()[0] for w in wrappers])
        self.values.append([w.get_pruned_weight_values()[0] for w in wrappers])


# -- the math ------------------------------------------------------------------------------------


def test_drop_and_grow_moves_the_weakest_active_weights_to_the_strongest_inactive_ones():
    mask = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    drop = np.array([4.0, 1.0, 3.0, 2.0, -np.inf, -np.inf, -np.inf, -np.inf])
    grow = np.array([0.0, 0.0, 0.0, 0.0, 0.5, 9.0, 0.1, 7.0])
    moved = regrowth.drop_and_grow(mask, drop, grow, fraction=0.5)
    np.testing.assert_array_equal(moved, [1, 0, 1, 0, 0, 1, 0, 1])
    # A dropped weight whose gradient outranks every inactive one stays.
    grow[1] = 100.0
    np.testing.assert_array_equal(regrowth.drop_and_grow(mask, drop, grow, 0.5), [1, 1, 1, 0, 0, 1, 0, 0])


def test_drop_and_grow_keeps_the_number_of_zeros_for_any_scores():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = (rng.random((7, 5)) < 0.3).astype(np.float32)
        moved = regrowth.drop_and_grow(mask, rng.normal(size=mask.shape), rng.normal(size=mask.shape), 0.4)
        assert moved.shape == mask.shape
        assert moved.sum() == mask.sum()
        assert (moved != mask).sum() <= 2 * round(0.4 * mask.sum())


def test_cosine_decay_reaches_zero_at_the_end_step():
    schedule = regrowth.Regrowth("rigl", fraction=0.3, end_step=100)
    assert [schedule.fraction_at(s) for s in (0, 50, 100, 101)] == pytest.approx([0.3, 0.15, 0.0, 0.0])
    assert regrowth.Regrowth("set", 0.2, end_step=100, decay="constant").fraction_at(99) == 0.2
    assert regrowth.Regrowth("set", 0.2).fraction_at(10**6) == 0.2


def test_regrowth_round_trips_through_its_config_and_keras_serialization():
    original = tfsparse.Regrowth("set", fraction=0.2, end_step=500, decay="constant", seed=7)
    assert tfsparse.Regrowth.from_config(original.get_config()) == original
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(original)))
    assert keras.saving.deserialize_keras_object(serialized) == original


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"method": "grow"}, "method='grow'"),
        ({"fraction": 0.0}, "fraction=0.0"),
        ({"end_step": 0}, "end_step=0"),
        ({"decay": "linear"}, "decay='linear'"),
    ],
)
def test_bad_regrowth_arguments_are_refused_naming_the_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        tfsparse.Regrowth(**arguments)


def test_regrowth_is_refused_with_block_patterns_and_unknown_names():
    with pytest.raises(ValueError, match="block_size"):
        tfsparse.prune_low_magnitude(make_mlp(), regrowth="rigl", block_size=(2, 2))
    with pytest.raises(ValueError, match="regrowth='random'"):
        tfsparse.prune_low_magnitude(make_mlp(), regrowth="random")


# -- during training -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_masks_move_while_sparsity_stays_exact_and_regrown_weights_start_at_zero(tabular, method):
    x, y = tabular
    pruned = _compiled(
        tfsparse.prune_low_magnitude(
            make_mlp(),
            pruning_schedule=tfsparse.ConstantSparsity(0.8, begin_step=0, frequency=2),
            regrowth=method,
        )
    )
    recorder = _MaskRecorder()
    pruned.fit(
        x,
        y,
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[tfsparse.UpdatePruningStep(calibration_data=(x, y)), recorder],
    )  # 16 steps, masks updated at 0, 2, ..., 14
    for masks in recorder.masks:
        assert [int((m == 0).sum()) for m in masks] == [round(0.8 * m.size) for m in masks]
    moved = [int((after != before).sum()) for after, before in zip(recorder.masks[2], recorder.masks[1])]
    assert all(count > 0 for count in moved)
    for step in range(2, 16, 2):
        for before, after, values in zip(
            recorder.masks[step - 1], recorder.masks[step], recorder.values[step]
        ):
            grown = (before == 0) & (after == 1)
            assert np.all(values[grown] == 0.0)
    final = [w.get_masks()[0] for w in collect_wrappers(pruned)]
    assert [int((m == 0).sum()) for m in final] == [round(0.8 * m.size) for m in final]


def test_global_scope_regrows_within_each_layer_once_the_total_is_reached(tabular):
    x, y = tabular
    pruned = _compiled(
        tfsparse.prune_low_magnitude(
            make_mlp(),
            pruning_schedule=tfsparse.ConstantSparsity(0.8, 0, frequency=2),
            scope="global",
            regrowth="set",
        )
    )
    recorder = _MaskRecorder()
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep(), recorder])
    first = [int((m == 0).sum()) for m in recorder.masks[0]]
    assert sum(first) == round(0.8 * sum(m.size for m in recorder.masks[0]))
    assert len(set(first)) > 1  # one threshold: layers at different sparsities
    for masks in recorder.masks[1:]:
        assert [int((m == 0).sum()) for m in masks] == first
    assert any((a != b).any() for a, b in zip(recorder.masks[0], recorder.masks[-1]))


def test_a_weight_pruned_at_the_first_update_comes_back_with_rigl(tabular):
    x, y = tabular
    pruned = _compiled(
        tfsparse.prune_low_magnitude(
            make_mlp(), pruning_schedule=tfsparse.ConstantSparsity(0.9, 0, frequency=4), regrowth="rigl"
        )
    )
    recorder = _MaskRecorder()
    pruned.fit(
        x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep((x, y)), recorder]
    )
    first, last = recorder.masks[0], [w.get_masks()[0] for w in collect_wrappers(pruned)]
    returned = [int(((f == 0) & (m == 1)).sum()) for f, m in zip(first, last)]
    assert all(count > 0 for count in returned)
    # Static training never brings one back.
    static = _compiled(
        tfsparse.prune_low_magnitude(
            make_mlp(), pruning_schedule=tfsparse.ConstantSparsity(0.9, 0, frequency=4)
        )
    )
    recorder = _MaskRecorder()
    static.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep(), recorder])
    for first, mask in zip(recorder.masks[0], [w.get_masks()[0] for w in collect_wrappers(static)]):
        np.testing.assert_array_equal(first, mask)


def test_rigl_gradients_reach_pruned_weights_and_leave_masks_and_outputs_as_they_were(tabular):
    x, y = tabular
    pruned = _compiled(tfsparse.prune_low_magnitude(make_mlp(), regrowth="rigl"))
    wrappers = collect_wrappers(pruned)
    mask_updates.prune_to(wrappers, lambda w: 0.5)  # from all-ones: pruned, not regrown
    masks = [w.get_masks()[0] for w in wrappers]
    outputs = pruned.predict(x[:8], verbose=0)
    gradients = regrowth.dense_gradients(wrappers, Calibration(pruned, (x, y), batches=1))
    for mask, (gradient,) in zip(masks, gradients):
        assert np.count_nonzero(gradient[mask == 0]) > 0.5 * np.count_nonzero(mask == 0)
    for wrapper, mask in zip(wrappers, masks):
        np.testing.assert_array_equal(wrapper.get_masks()[0], mask)
    np.testing.assert_allclose(pruned.predict(x[:8], verbose=0), outputs, atol=1e-6)


def test_rigl_without_calibration_data_is_refused_naming_the_layer(tabular):
    x, y = tabular
    pruned = _compiled(tfsparse.prune_low_magnitude(make_mlp(), regrowth="rigl"))
    with pytest.raises(ValueError, match="prune_low_magnitude_dense.*calibration_data"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])


def test_saved_model_resumes_its_regrowth_where_it_stopped(tabular, tmp_path):
    x, y = tabular
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]

    def fresh():
        keras.utils.set_random_seed(0)
        return _compiled(
            tfsparse.prune_low_magnitude(
                make_mlp(),
                pruning_schedule=tfsparse.ConstantSparsity(0.8, 0, frequency=3),
                regrowth=tfsparse.Regrowth("rigl", fraction=0.3, end_step=14),
            )
        )

    def fit(model):
        callback = tfsparse.UpdatePruningStep(calibration_data=batches)
        model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[callback])

    straight = fresh()
    fit(straight)
    fit(straight)
    halfway = fresh()
    fit(halfway)
    halfway.save(tmp_path / "half.keras")
    resumed = keras.saving.load_model(tmp_path / "half.keras")
    assert [w.regrowth for w in collect_wrappers(resumed)] == [
        tfsparse.Regrowth("rigl", 0.3, end_step=14)
    ] * 3
    fit(resumed)
    for expected, got in zip(collect_wrappers(straight), collect_wrappers(resumed)):
        assert got.get_pruning_step() == 16
        np.testing.assert_array_equal(got.get_masks()[0], expected.get_masks()[0])


def test_rigl_from_scratch_is_not_below_static_magnitude_on_digits_at_95_percent(digits_all):
    (x, y), (x_test, y_test) = digits_all
    accuracies = {}
    for method in (None, "rigl"):
        keras.utils.set_random_seed(0)
        pruned = _compiled(
            tfsparse.prune_low_magnitude(
                make_digits_cnn(),
                pruning_schedule=tfsparse.ConstantSparsity(0.95, 0, frequency=25),
                regrowth=None if method is None else tfsparse.Regrowth("rigl", 0.3, end_step=130),
            ),
            learning_rate=3e-3,
        )
        pruned.fit(
            x, y, epochs=4, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep((x, y))]
        )  # 176 steps; the same masks count at 95% for both
        accuracies[method] = pruned.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracies["rigl"] >= accuracies[None] + 0.05, accuracies
