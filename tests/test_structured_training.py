"""Gradual structured pruning: channel groups masked during fit, then removed by finalize."""

import keras
import numpy as np
import pytest
from conftest import make_cnn, make_mlp

import tfsparse
from tfsparse.structured import DependencyGraph, group_scores, training
from tfsparse.structured.training import (
    ChannelGroupLasso,
    UpdateChannelMasks,
    finalize,
    masked_channels,
    prune_gradually,
)


def _fit(model, schedule, epochs=2, regularizer=None, **callback):
    x = np.random.default_rng(0).normal(size=(64, *model.input_shape[1:])).astype("float32")
    y = np.random.default_rng(1).integers(0, model.output_shape[-1], 64)
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=schedule, regularizer=regularizer)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=epochs, callbacks=[UpdateChannelMasks(**callback)], verbose=0)
    return pruned, x


def test_fit_masks_whole_channels_and_finalize_removes_exactly_them(monkeypatch):
    # A group lasso on each kernel's output channels shrinks channels before the masks take them.
    regularizer = tfsparse.regularizers.GroupLasso(1e-3, groups="columns")
    schedule = tfsparse.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8, frequency=2)
    pruned, x = _fit(make_cnn(), schedule, regularizer=regularizer)
    stripped = tfsparse.strip_pruning(pruned)
    conv, depthwise, dense, _ = [
        layer for layer in stripped.layers if layer.weights and len(layer.weights) == 2
    ]
    dead = np.flatnonzero(np.abs(conv.get_weights()[0]).reshape(-1, 8).sum(axis=0) == 0)
    assert len(dead) == 4  # half of the 8 filters, whole
    assert np.all(depthwise.get_weights()[0][:, :, dead] == 0)  # and the same channels downstream
    dense_kernel = dense.get_weights()[0]
    assert (np.abs(dense_kernel).sum(axis=0) == 0).sum() == 16  # half of the 32 units
    checked = []
    monkeypatch.setattr(training, "check_speedup", lambda *models, runtime: checked.append((models, runtime)))
    small = finalize(pruned)
    assert len(checked) == 1 and checked[0][0][1] is small and checked[0][1] == "keras"
    assert small.get_layer(conv.name).filters == 4 and small.get_layer(dense.name).units == 16
    assert small.count_params() < 0.6 * stripped.count_params()
    np.testing.assert_allclose(small.predict_on_batch(x), stripped.predict_on_batch(x), atol=1e-5)


def test_masked_channels_stay_masked_and_round_to_holds():
    pruned, _ = _fit(
        make_mlp(), tfsparse.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=12, frequency=4), round_to=4
    )
    graph = DependencyGraph(tfsparse.strip_pruning(pruned))
    removed = masked_channels(pruned, graph)
    # 60% of 32 is 19.2; the 13 kept round to 12, a multiple of 4
    assert sorted(len(channels) for channels in removed.values()) == [20, 20]
    callback = UpdateChannelMasks()
    callback.set_model(pruned)
    callback.on_train_begin()
    again = callback.update_masks({wrapper.layer.name: 0.75 for wrapper in pruned.layers[:2]})
    for group, channels in removed.items():
        assert set(channels) <= set(again[group]) and len(again[group]) == 24
    callback.on_train_end()


def test_finalize_removes_all_zero_channels_of_a_plain_model_without_changing_outputs():
    model = make_mlp()
    dense, head = model.layers[1], model.layers[2]
    kernel, bias = dense.get_weights()
    kernel[:, :10], bias[:10] = 0.0, 0.0
    dense.set_weights([kernel, bias])
    head_kernel, head_bias = head.get_weights()
    head_kernel[:10] = 0.0
    head.set_weights([head_kernel, head_bias])
    x = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    small = finalize(model, speed_check=None)
    assert [layer.units for layer in small.layers[-3:]] == [32, 22, 4]
    np.testing.assert_allclose(small.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="`tolerance`"):
        finalize(make_mlp(), tolerance=1.0)
    with pytest.raises(ValueError, match="`speed_check`"):
        finalize(make_mlp(), speed_check="tpu")
    with pytest.raises(ValueError, match="`round_to`"):
        UpdateChannelMasks(round_to=0)
    with pytest.raises(ValueError, match="`importance`"):
        UpdateChannelMasks(importance="largest")


def _relative_norms(model):
    """Each hidden channel group's channel norms over the group's largest, smallest first."""
    stripped = tfsparse.strip_pruning(model)
    scores = group_scores(stripped, DependencyGraph(stripped), "l2")
    return [np.sort(values / values.max()) for values in scores.values()]


def test_a_channel_group_lasso_pulls_whole_channels_to_zero_for_finalize(tabular):
    x, y = tabular
    trained = {}
    for strength in (None, 5e-3):
        keras.utils.set_random_seed(0)
        pruned = prune_gradually(make_mlp(), tfsparse.ConstantSparsity(0.0, 0), group_lasso=strength)
        pruned.compile(
            keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        pruned.fit(x, y, batch_size=32, epochs=10, callbacks=[UpdateChannelMasks()], verbose=0)
        trained[strength] = pruned
    # Kernels are penalized along the axes of prunable groups only: not the inputs, not the logits.
    assert [w.regularizer.groups for w in trained[5e-3].layers] == [
        ["columns"],
        ["rows", "columns"],
        ["rows"],
    ]
    plain, lasso = _relative_norms(trained[None]), _relative_norms(trained[5e-3])
    for without, with_lasso in zip(plain, lasso):
        assert np.median(with_lasso[:8]) < np.median(without[:8]) / 3
    small = finalize(trained[5e-3], tolerance=0.05, speed_check=None)
    stripped = tfsparse.strip_pruning(trained[5e-3])
    assert sum(layer.units for layer in small.layers[1:3]) < 64
    accuracy = np.mean(np.argmax(small.predict_on_batch(x), axis=1) == y)
    assert accuracy > 0.9 and accuracy >= np.mean(np.argmax(stripped.predict_on_batch(x), axis=1) == y) - 0.02


def test_channel_group_lasso_round_trips_and_refuses_unknown_axes():
    regularizer = ChannelGroupLasso(1e-3, groups=["rows", "columns"])
    again = ChannelGroupLasso.from_config(regularizer.get_config())
    kernel = np.arange(12, dtype="float32").reshape(3, 4)
    rows = tfsparse.regularizers.GroupLasso(1e-3, "rows")(kernel)
    columns = tfsparse.regularizers.GroupLasso(1e-3, "columns")(kernel)
    np.testing.assert_allclose(float(again(kernel)), float(rows + columns), rtol=1e-6)
    with pytest.raises(ValueError, match="`groups`"):
        ChannelGroupLasso(groups=["filters"])
