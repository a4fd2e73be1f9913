import keras
import numpy as np
import pytest
from conftest import make_mlp

import tfsparse
from tfsparse import mask_updates


def _pruned(**arguments):
    return tfsparse.prune_low_magnitude(make_mlp(), **arguments)


def test_update_masks_prunes_only_when_the_schedule_says_so():
    wrappers = mask_updates.collect_wrappers(
        _pruned(pruning_schedule=tfsparse.ConstantSparsity(0.5, begin_step=10, frequency=5))
    )
    assert not mask_updates.update_masks(wrappers, 9)
    assert all(m.min() == 1.0 for w in wrappers for m in w.get_masks())
    assert mask_updates.update_masks(wrappers, 10)
    assert all((m == 0).mean() == pytest.approx(0.5, abs=0.01) for w in wrappers for m in w.get_masks())


def test_weights_pruned_earlier_stay_pruned_as_sparsity_grows():
    wrappers = mask_updates.collect_wrappers(_pruned())
    mask_updates.prune_to(wrappers, lambda w: 0.5)
    first = [w.get_masks()[0] for w in wrappers]
    # Make pruned weights large in storage: they must not come back, scores use weight * mask.
    for wrapper, mask in zip(wrappers, first):
        value = wrapper.get_pruned_weight_values()[0]
        wrapper.pruned_weights[0].assign(np.where(mask == 0, 100.0, value))
    mask_updates.prune_to(wrappers, lambda w: 0.7)
    for wrapper, before in zip(wrappers, first):
        after = wrapper.get_masks()[0]
        assert np.all(after[before == 0] == 0)
        assert (after == 0).sum() == round(0.7 * after.size)


def test_global_scope_shares_one_threshold_and_reaches_the_total():
    pruned = _pruned(pruning_schedule=tfsparse.ConstantSparsity(0.8, 0), scope="global")
    wrappers = mask_updates.collect_wrappers(pruned)
    wrappers[2].pruned_weights[0].assign(wrappers[2].get_pruned_weight_values()[0] * 10.0)  # a loud layer
    mask_updates.update_masks(wrappers, 0)
    masks = [w.get_masks()[0] for w in wrappers]
    total = sum(m.size for m in masks)
    assert sum(int((m == 0).sum()) for m in masks) == round(0.8 * total)
    assert (masks[2] == 0).mean() < 0.5 < (masks[0] == 0).mean()


def test_collect_wrappers_finds_wrappers_in_nested_models_once():
    inner = tfsparse.prune_low_magnitude(make_mlp())
    inputs = keras.Input((16,))
    outer = keras.Model(inputs, inner(inner(keras.layers.Dense(16)(inputs))[:, :1] * keras.ops.ones((1, 16))))
    assert len(mask_updates.collect_wrappers(outer)) == 3


def test_global_scope_by_default_leaves_no_layer_empty_when_weight_scales_differ(tabular):
    # The first layer's weights are 20 times larger: one plain threshold at 80% would take every
    # weight of the other two layers, leaving a classifier that outputs its bias.
    x, y = tabular
    model = make_mlp()
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([kernel * 20.0, bias])
    pruned = tfsparse.prune_low_magnitude(model, tfsparse.ConstantSparsity(0.8, 0), scope="global")
    wrappers = mask_updates.collect_wrappers(pruned)
    mask_updates.update_masks(wrappers, 0)
    masks = [w.get_masks()[0] for w in wrappers]
    assert sum(int((m == 0).sum()) for m in masks) == round(0.8 * sum(m.size for m in masks))
    for mask in masks:
        assert mask.mean() >= mask_updates.default_min_density(0.8) - 1e-6
    outputs = keras.ops.convert_to_numpy(pruned(x[:32]))
    assert np.std(outputs, axis=0).min() > 0  # the outputs still depend on the inputs


def test_a_setting_that_empties_a_layer_is_warned_about_by_name():
    model = make_mlp()
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([kernel * 20.0, bias])
    pruned = tfsparse.prune_low_magnitude(
        model, tfsparse.ConstantSparsity(0.8, 0), scope="global", min_density=0.0
    )
    wrappers = mask_updates.collect_wrappers(pruned)
    with pytest.warns(UserWarning, match=f"Layer '{wrappers[1].name}' has every weight .* min_density"):
        mask_updates.update_masks(wrappers, 0)


def _nan_kernel_mlp():
    model = make_mlp()
    kernel, bias = model.layers[1].get_weights()
    kernel[0, :3] = np.nan
    model.layers[1].set_weights([kernel, bias])
    return model


NAN_WEIGHT_MESSAGE = r"Layer 'prune_low_magnitude_dense_\d+' weight 'kernel' has 3 NaN values.*diverged"


def test_nan_weights_during_fit_are_refused_naming_the_layer_and_weight(tabular):
    x, y = tabular
    pruned = tfsparse.prune_low_magnitude(
        _nan_kernel_mlp(), pruning_schedule=tfsparse.ConstantSparsity(0.5, 0, frequency=1)
    )
    pruned.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=NAN_WEIGHT_MESSAGE):
        pruned.fit(x[:16], y[:16], batch_size=8, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_nan_weights_in_one_shot_pruning_are_refused_naming_the_layer_and_weight(scope):
    with pytest.raises(ValueError, match=NAN_WEIGHT_MESSAGE):
        tfsparse.prune_oneshot(_nan_kernel_mlp(), 0.5, criterion="magnitude", scope=scope)


def test_nan_scores_from_finite_weights_blame_the_calibration_data():
    # NaN inputs are refused where the data enter; here a batch iterable hides one NaN batch.
    x = np.random.default_rng(0).normal(size=(4, 8, 16)).astype("float32")
    x[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"batch 1\).*1 NaN input values"):
        tfsparse.prune_oneshot(make_mlp(), 0.5, list(x), criterion="wanda")
    # Scores that turn NaN although the weights are finite (here: NaN input norms) name the criterion.
    wrapper = mask_updates.collect_wrappers(tfsparse.prune_low_magnitude(make_mlp(), criterion="wanda"))[0]
    with pytest.raises(ValueError, match=r"weight 'kernel' got 512 NaN scores from criterion 'wanda'"):
        mask_updates.layer_scores(wrapper, [{"input_norm": np.full((16, 1), np.nan, "float32")}])
