"""Models (MLP, CNN, one transformer block), data and the timing loop shared by the overhead benchmark's Keras 3 and tf-keras runs.

`keras` is passed in, so the same code builds and times a Keras 3 model and a tf-keras one.
"""

import statistics
import time

import numpy as np

BATCH_SIZE = 64
STEPS = 100


def build(keras, name):
    layers = keras.layers
    if name == "cnn":
        inputs = keras.Input((32, 32, 3))
        x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
        x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
        x = layers.GlobalAveragePooling2D()(x)
        outputs = layers.Dense(10)(x)
    elif name == "transformer":
        # One encoder block: self-attention and a feed-forward, each with a residual and a norm.
        inputs = keras.Input((32, 64))
        attention = layers.MultiHeadAttention(num_heads=4, key_dim=16)(inputs, inputs)
        x = layers.LayerNormalization()(layers.Add()([inputs, attention]))
        feed_forward = layers.Dense(64)(layers.Dense(256, activation="relu")(x))
        x = layers.LayerNormalization()(layers.Add()([x, feed_forward]))
        outputs = layers.Dense(10)(layers.GlobalAveragePooling1D()(x))
    else:
        inputs = keras.Input((784,))
        x = layers.Dense(512, activation="relu")(inputs)
        x = layers.Dense(512, activation="relu")(x)
        outputs = layers.Dense(10)(x)
    return keras.Model(inputs, outputs)


def data(name, steps=STEPS):
    rng = np.random.default_rng(0)
    shape = {"cnn": (32, 32, 3), "transformer": (32, 64)}.get(name, (784,))
    x = rng.random((steps * BATCH_SIZE, *shape), dtype=np.float32)
    y = rng.integers(0, 10, steps * BATCH_SIZE).astype("int32")
    return x, y


def compile_model(keras, model, jit_compile=False):
    model.compile(
        keras.optimizers.SGD(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def time_alternating(runs, x, y, repeats):
    """Median seconds per step of each run; `runs` maps a label to `(model, callbacks)`.

    Each model is fitted once to warm up (tracing), then the runs alternate `repeats` times, so
    that drifts of the machine touch all of them alike.
    """
    steps = len(x) // BATCH_SIZE
    for model, callbacks in runs.values():
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=callbacks)
    samples = {label: [] for label in runs}
    for _ in range(repeats):
        for label, (model, callbacks) in runs.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=callbacks)
            samples[label].append((time.perf_counter() - start) / steps)
    return {label: statistics.median(values) for label, values in samples.items()}
