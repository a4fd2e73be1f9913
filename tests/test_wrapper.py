import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import PruneLowMagnitude


def _built(wrapper, input_shape=(None, 6)):
    wrapper.build(input_shape)
    return wrapper


def test_wrapper_holds_one_mask_per_pruned_weight_and_a_step():
    wrapper = _built(PruneLowMagnitude(keras.layers.Dense(4)))
    assert [m.shape for m in wrapper.masks] == [(6, 4)]
    assert all(not m.trainable for m in wrapper.masks) and not wrapper.pruning_step.trainable
    assert wrapper.get_pruning_step() == 0
    assert np.array_equal(wrapper.get_masks()[0], np.ones((6, 4)))
    assert wrapper.name == "prune_low_magnitude_" + wrapper.layer.name


def test_layer_runs_on_weight_times_mask_and_gradients_reach_only_kept_weights():
    import tensorflow as tf

    wrapper = _built(PruneLowMagnitude(keras.layers.Dense(4, use_bias=False)))
    mask = np.zeros((6, 4), "float32")
    mask[:3] = 1.0
    wrapper.masks[0].assign(mask)  # mask only, stored weights left whole
    kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel.value)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapper(x)), x @ (kernel * mask), rtol=1e-6)
    wrapper.set_step_driven(True)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wrapper(x, training=True) ** 2)
    (gradient,) = tape.gradient(loss, [wrapper.layer.kernel.value])
    assert np.all(gradient.numpy()[3:] == 0) and np.any(gradient.numpy()[:3] != 0)
    assert wrapper.get_pruning_step() == 1


def test_set_masks_zeroes_the_stored_weights_and_masked_weights_follow_layer_order():
    wrapper = _built(PruneLowMagnitude(keras.layers.Dense(4)))
    mask = np.random.default_rng(0).integers(0, 2, size=(6, 4)).astype("float32")
    wrapper.set_masks([mask])
    kernel, bias = wrapper.masked_weights()
    assert np.all(kernel[mask == 0] == 0)
    assert bias.shape == (4,)
    np.testing.assert_array_equal(wrapper.get_pruned_weight_values()[0], kernel)


@pytest.mark.parametrize(
    "arguments",
    [
        dict(pruning_schedule=tfsparse.PolynomialDecay(0.1, 0.7, 3, 50, power=2, frequency=5)),
        dict(block_size=(2, 2), block_pooling_type="MAX"),
        dict(sparsity_m_by_n=(2, 4), scope="global"),
    ],
    ids=["schedule", "block", "m_by_n"],
)
def test_wrapper_config_round_trips(arguments):
    wrapper = PruneLowMagnitude(keras.layers.Conv2D(3, 2), **arguments)
    config = wrapper.get_config()
    restored = PruneLowMagnitude.from_config(config)
    assert restored.get_config() == config
    assert restored.pruning_schedule == wrapper.pruning_schedule
    assert type(restored.layer) is keras.layers.Conv2D


def test_wrapping_a_layer_without_prunable_weights_is_refused():
    with pytest.raises(ValueError, match="no weights to prune"):
        PruneLowMagnitude(keras.layers.MaxPooling2D())
    with pytest.raises(ValueError, match="wraps a Keras layer"):
        PruneLowMagnitude("dense")
    with pytest.raises(ValueError, match="`scope` must be one of"):
        PruneLowMagnitude(keras.layers.Dense(2), scope="model")


def _shared_layer_model():
    shared = keras.layers.Dense(8, name="shared")
    first, second = keras.Input((4,)), keras.Input((4,))
    merged = keras.layers.Concatenate()([shared(first), shared(second)])
    return keras.Model([first, second], keras.layers.Dense(2, name="head")(merged))


def test_a_shared_layer_counts_training_steps_not_calls_also_across_save_and_resume(tmp_path):
    # Counting calls advanced the shared layer twice per step, and with it every layer's schedule:
    # 16 steps of this schedule reached 0.78 instead of 0.69.
    schedule = tfsparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=32, frequency=1)
    pruned = tfsparse.prune_low_magnitude(_shared_layer_model(), pruning_schedule=schedule)
    pruned.compile("sgd", "mse")
    x = np.random.default_rng(0).random((8, 4)).astype("float32")
    y = np.zeros((8, 2), "float32")
    fit = dict(batch_size=1, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    pruned.fit([x, x], y, **fit)
    path = tmp_path / "shared.keras"
    pruned.save(path)
    resumed = keras.saving.load_model(path)
    resumed.fit([x, x], y, **fit)
    wrappers = {
        layer.name: layer for layer in resumed.layers if isinstance(layer, tfsparse.PruneLowMagnitude)
    }
    assert {name: wrapper.get_pruning_step() for name, wrapper in wrappers.items()} == {
        "prune_low_magnitude_shared": 16,
        "prune_low_magnitude_head": 16,
    }
    expected = schedule(15)[1]  # the last mask update ran at step 15
    for wrapper in wrappers.values():
        mask = wrapper.get_masks()[0]
        assert float((mask == 0).mean()) == round(expected * mask.size) / mask.size


def test_loading_a_pruned_model_without_tfsparse_says_import_tfsparse(tmp_path, monkeypatch):
    # Keras imports classes only from its own packages, so no registration can make this load;
    # the error must at least say what to do. Unregistering stands in for a fresh process.
    pruned = tfsparse.prune_low_magnitude(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    pruned.save(tmp_path / "pruned.keras")
    monkeypatch.delitem(keras.saving.get_custom_objects(), "tfsparse>PruneLowMagnitude")
    with pytest.raises(TypeError) as raised:
        keras.saving.load_model(tmp_path / "pruned.keras")
    message = str(raised.value)
    cause = message[message.index("Could not locate class 'PruneLowMagnitude'") :]
    assert "run `import tfsparse` before keras.saving.load_model" in cause[:500]
