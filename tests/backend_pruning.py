"""Prunes, saves, resumes and strips a tiny CNN on the Keras backend named by KERAS_BACKEND.

Prints one JSON line of facts; run in its own process, since the backend is fixed at import.
"""

import json
import os
import sys
import tempfile
import time

import keras
import numpy as np

import tfsparse
from tfsparse.mask_updates import collect_wrappers


def _model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.1)(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _sparsities(model):
    return [float((w.get_masks()[0] == 0).mean()) for w in collect_wrappers(model)]


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 256)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    facts = {"backend": keras.backend.backend()}
    pruned = tfsparse.prune_low_magnitude(
        _model(), pruning_schedule=tfsparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=2)
    )
    pruned.compile("adam", loss)
    start = time.perf_counter()
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    facts["fit_seconds"] = time.perf_counter() - start
    facts["steps"] = [w.get_pruning_step() for w in collect_wrappers(pruned)]
    facts["sparsities"] = _sparsities(pruned)
    facts["stored_zeros_follow_masks"] = all(
        bool((value[mask == 0] == 0).all())
        for w in collect_wrappers(pruned)
        for value, mask in zip(w.get_pruned_weight_values(), w.get_masks())
    )
    stripped = tfsparse.strip_pruning(pruned)
    facts["strip_max_difference"] = float(
        np.abs(stripped.predict(x, verbose=0) - pruned.predict(x, verbose=0)).max()
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "mid.keras")
        pruned.save(path)
        loaded = keras.saving.load_model(path)
    facts["loaded_steps"] = [w.get_pruning_step() for w in collect_wrappers(loaded)]
    loaded.compile("adam", loss)
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    facts["resumed_steps"] = [w.get_pruning_step() for w in collect_wrappers(loaded)]
    try:
        loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
        facts["missing_callback_error"] = ""
    except ValueError as error:
        facts["missing_callback_error"] = str(error)
    # Gradient-based scores go through the one backend-specific module: same numbers everywhere.
    from tfsparse import _gradients

    scored = _model()
    weight_rng = np.random.default_rng(1)  # backends draw different initial weights; numpy does not
    for weight in scored.weights:
        if weight.name == "kernel":
            weight.assign(weight_rng.normal(scale=0.1, size=weight.shape).astype("float32"))
    batches = [(x[:64], y[:64]), (x[64:128], y[64:128])]
    gradients = _gradients.gradient_sums(scored, [scored.layers[-1].kernel], batches, loss, absolute=True)
    facts["gradient_sum"] = float(np.sum(gradients[0]))
    json.dump(facts, sys.stdout)
    print()


if __name__ == "__main__":
    main()
