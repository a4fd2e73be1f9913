"""The user's day: prune while fitting, strip, save; under mixed precision and tf.distribute too."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import make_cnn, make_digits_cnn

import tfsparse
from tfsparse.mask_updates import collect_wrappers


def _kernel_sparsities(model):
    return {
        wrapper.name: float((mask == 0).mean())
        for wrapper in collect_wrappers(model)
        for mask in wrapper.get_masks()
    }


def test_digits_cnn_pruned_to_90_percent_keeps_its_accuracy_and_strips_to_identical_outputs(
    digits_all, tmp_path
):
    (x_train, y_train), (x_test, y_test) = digits_all
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    dense = make_digits_cnn()
    dense.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    dense.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    dense_accuracy = dense.evaluate(x_test, y_test, verbose=0)[1]

    steps_per_epoch = -(-len(x_train) // 32)
    pruned = tfsparse.prune_low_magnitude(
        dense,
        pruning_schedule=tfsparse.PolynomialDecay(
            0.0, 0.9, begin_step=0, end_step=3 * steps_per_epoch, frequency=10
        ),
    )
    pruned.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    pruned.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    pruned_accuracy = pruned.evaluate(x_test, y_test, verbose=0)[1]

    sparsities = _kernel_sparsities(pruned)
    assert all(value == pytest.approx(0.9, abs=0.005) for value in sparsities.values()), sparsities
    assert dense_accuracy > 0.88
    assert pruned_accuracy > dense_accuracy - 0.05

    final = tfsparse.strip_pruning(pruned)
    np.testing.assert_array_equal(final.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0))
    final.save(tmp_path / "final.keras")
    reloaded = keras.saving.load_model(tmp_path / "final.keras")
    kernels = [w for layer in reloaded.layers for w in layer.weights if "kernel" in w.name]
    assert len(kernels) == 4
    assert all(
        float(np.mean(keras.ops.convert_to_numpy(k) == 0)) == pytest.approx(0.9, abs=0.005) for k in kernels
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_pruning_under_mixed_precision_reaches_the_target_and_strips_exactly(policy, digits):
    x, y = digits
    keras.config.set_dtype_policy(policy)
    model = make_cnn()
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule=tfsparse.ConstantSparsity(0.75, 0, frequency=4)
    )
    assert collect_wrappers(pruned)[0].dtype_policy.name == policy
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = pruned.fit(
        x[:256], y[:256], epochs=2, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()]
    )
    assert np.isfinite(history.history["loss"]).all()
    for wrapper in collect_wrappers(pruned):
        assert wrapper.pruned_weights[0].dtype == "float32"  # variables stay float32
        (mask,) = wrapper.get_masks()
        assert (mask == 0).sum() == round(0.75 * mask.size)
    final = tfsparse.strip_pruning(pruned)
    assert final.layers[1].dtype_policy.name == policy
    np.testing.assert_array_equal(final.predict(x[:32], verbose=0), pruned.predict(x[:32], verbose=0))


def test_mirrored_strategy_on_two_devices_keeps_replicas_identical_and_reaches_the_target():
    script = os.path.join(os.path.dirname(__file__), "distributed_pruning.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["replicas"] == 2
    for layer in facts["layers"]:
        assert layer["step"] == 16
        assert layer["masks_identical"] and layer["kernels_identical"] and layer["kernel_zeros_follow_mask"]
        assert layer["sparsity"][0] == pytest.approx(0.8, abs=0.01)
