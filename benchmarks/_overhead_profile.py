"""Where the pruned MLP's extra step time goes: a breakdown in microseconds per step.

    [KERAS_BACKEND=jax] python benchmarks/_overhead_profile.py [--repeats 7] [--steps 200]

Times, per training step and as medians of alternated repeats: the compiled step of the dense and of
the pruned MLP (called directly, without fit()'s loop), the host-side work of `UpdatePruningStep`
at a step without a mask update, the elementwise `weight * mask` of all pruned kernels (the step
does it twice: forward, and for the gradient), and the same with a bool mask and `where` (the
compact storage the issue asks to try; these two rows on TensorFlow only).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _overhead_models import BATCH_SIZE, build, compile_model, data  # noqa: E402

import tfsparse  # noqa: E402
from tfsparse.mask_updates import collect_wrappers  # noqa: E402


def _per_call(function, calls):
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x, y = data("mlp", 1)
    x, y = x[:BATCH_SIZE], y[:BATCH_SIZE]
    dense = compile_model(keras, build(keras, "mlp"))
    schedule = tfsparse.PolynomialDecay(0.5, 0.9, begin_step=0, end_step=10_000, frequency=100)
    pruned = compile_model(
        keras, tfsparse.prune_low_magnitude(build(keras, "mlp"), pruning_schedule=schedule)
    )
    pruned.make_train_function()  # on_train_begin wraps the compiled step; it must exist first
    driver = tfsparse.UpdatePruningStep()
    driver.set_model(pruned)
    driver.on_train_begin()
    driver.on_train_batch_begin(0)  # the mask update at step 0; the timed steps have none
    batch = {"x": x, "y": y}

    def host_step():
        driver.on_train_batch_begin(1)
        driver._step -= 1  # stay between mask updates

    parts = {
        "dense compiled step": lambda: dense.train_on_batch(**batch),
        "pruned compiled step": lambda: pruned.train_on_batch(**batch),
        "UpdatePruningStep host work": host_step,
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        kernels = [w.pruned_weights[0] for w in collect_wrappers(pruned)]
        masks = [tf.constant(np.random.default_rng(0).random(k.shape) > 0.5) for k in kernels]
        float_masks = [tf.cast(m, "float32") for m in masks]
        parts["weight * float mask, all kernels"] = tf.function(
            lambda: [k.value * m for k, m in zip(kernels, float_masks)]
        )
        parts["where(bool mask, weight, 0)"] = tf.function(
            lambda: [tf.where(m, k.value, 0.0) for k, m in zip(kernels, masks)]
        )
    for part in parts.values():  # trace and warm up
        for _ in range(5):
            part()
    samples = {label: [] for label in parts}
    for _ in range(args.repeats):
        for label, part in parts.items():
            samples[label].append(_per_call(part, args.steps))
    print(
        f"MLP 784-512-512-10, batch {BATCH_SIZE}, {keras.backend.backend()} CPU; median us per call, {args.repeats} repeats"
    )
    for label, values in samples.items():
        print(f"{label:<36} {statistics.median(values) * 1e6:>9.1f}")
    driver.on_train_end()


if __name__ == "__main__":
    main()
