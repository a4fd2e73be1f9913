import glob
import json
import os

import keras
import numpy as np
import pytest
from conftest import make_mlp

import tfsparse
from tfsparse.mask_updates import collect_wrappers


def _compiled(model):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _sparsities(model):
    return [float((wrapper.get_masks()[0] == 0).mean()) for wrapper in collect_wrappers(model)]


def test_fit_without_update_pruning_step_fails_naming_the_callback(tabular):
    x, y = tabular
    pruned = _compiled(tfsparse.prune_low_magnitude(make_mlp()))
    with pytest.raises(ValueError, match="UpdatePruningStep.*custom training loop"):
        pruned.fit(x, y, epochs=1, verbose=0)
    # The same model then trains fine once the callback is there.
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    assert _sparsities(pruned) == [0.5, 0.5, 0.5]
    # And a later fit that forgets the callback fails again instead of silently not pruning.
    with pytest.raises(ValueError, match="UpdatePruningStep"):
        pruned.fit(x, y, epochs=1, verbose=0)


def test_steps_advance_once_per_batch_and_masks_follow_the_schedule(tabular):
    x, y = tabular
    schedule = tfsparse.PolynomialDecay(0.2, 0.8, begin_step=0, end_step=12, frequency=4)
    pruned = _compiled(tfsparse.prune_low_magnitude(make_mlp(), pruning_schedule=schedule))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(_sparsities(self.model)[0])

    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep(), Record()])
    assert all(wrapper.get_pruning_step() == 16 for wrapper in collect_wrappers(pruned))
    kernel_size = 16 * 32
    expected = []
    for step in range(16):
        should_prune, sparsity = schedule(step)
        if should_prune:
            current = round(sparsity * kernel_size) / kernel_size
        expected.append(current)
    np.testing.assert_allclose(seen, expected)


def test_saved_mid_training_model_loads_without_custom_objects_and_continues_its_schedule(tabular, tmp_path):
    x, y = tabular
    schedule = tfsparse.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=16, frequency=2)
    pruned = _compiled(tfsparse.prune_low_magnitude(make_mlp(), pruning_schedule=schedule))
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])  # 8 steps
    sparsity_at_save = _sparsities(pruned)
    path = tmp_path / "mid.keras"
    pruned.save(path)

    loaded = keras.saving.load_model(path)
    assert [w.get_pruning_step() for w in collect_wrappers(loaded)] == [8, 8, 8]
    assert _sparsities(loaded) == sparsity_at_save
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(json.dumps(pruned.get_config()))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)

    first_masks = []

    class FirstUpdate(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                first_masks.append(_sparsities(self.model)[0])

    loaded.fit(
        x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep(), FirstUpdate()]
    )
    # Step 8 of the schedule, not step 0: resuming does not restart the ramp.
    assert first_masks[0] == pytest.approx(round(schedule(8)[1] * 512) / 512)
    assert [w.get_pruning_step() for w in collect_wrappers(loaded)] == [16, 16, 16]
    assert _sparsities(loaded)[0] == pytest.approx(round(schedule(14)[1] * 512) / 512)  # last pruning step


def test_custom_training_loop_drives_the_step_through_the_callback_hooks(tabular):
    import tensorflow as tf

    x, y = tabular
    pruned = tfsparse.prune_low_magnitude(
        make_mlp(), pruning_schedule=tfsparse.ConstantSparsity(0.7, begin_step=2, frequency=1)
    )
    optimizer = keras.optimizers.SGD(0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step_callback = tfsparse.UpdatePruningStep()
    step_callback.set_model(pruned)
    step_callback.on_train_begin()
    for batch in range(4):
        step_callback.on_train_batch_begin(batch)
        with tf.GradientTape() as tape:
            loss = loss_fn(y[:32], pruned(x[:32], training=True))
        grads = tape.gradient(loss, pruned.trainable_variables)
        optimizer.apply(grads, pruned.trainable_variables)
        step_callback.on_train_batch_end(batch)
    step_callback.on_train_end()
    assert _sparsities(pruned) == pytest.approx([round(0.7 * n) / n for n in (512, 1024, 128)])
    assert collect_wrappers(pruned)[0].get_pruning_step() == 4
    for wrapper in collect_wrappers(pruned):
        kernel = wrapper.get_pruned_weight_values()[0]
        assert (kernel[wrapper.get_masks()[0] == 0] == 0).all()


def test_pruning_summaries_write_layer_sparsity_and_target_to_tensorboard(tabular, tmp_path):
    import tensorflow as tf

    x, y = tabular
    pruned = _compiled(
        tfsparse.prune_low_magnitude(
            make_mlp(), pruning_schedule=tfsparse.ConstantSparsity(0.6, 0, frequency=1)
        )
    )
    pruned.fit(
        x,
        y,
        epochs=2,
        batch_size=64,
        verbose=0,
        callbacks=[tfsparse.UpdatePruningStep(), tfsparse.PruningSummaries(log_dir=str(tmp_path))],
    )
    (event_file,) = glob.glob(os.path.join(tmp_path, "pruning", "events.*"))
    scalars = {}
    for event in tf.compat.v1.train.summary_iterator(event_file):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    name = collect_wrappers(pruned)[0].name
    assert scalars["pruning_step"] == [(4, 4.0), (8, 8.0)]
    assert scalars[f"{name}/target_sparsity"] == [(4, pytest.approx(0.6)), (8, pytest.approx(0.6))]
    sparsities = [value for _, value in scalars[f"{name}/kernel_sparsity"]]
    assert sparsities == pytest.approx([round(0.6 * 512) / 512] * 2)


def test_pruning_summaries_reject_a_bad_update_freq():
    with pytest.raises(ValueError, match="update_freq"):
        tfsparse.PruningSummaries("logs", update_freq=0)
