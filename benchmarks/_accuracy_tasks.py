"""Tasks, models and the training recipe shared by the accuracy benchmark's Keras 3 and tf-keras runs.

`keras` is passed in, so the same code builds a Keras 3 model and a tf-keras one with identical
weight layouts: the tfmot run starts from the very dense weights the tfsparse runs start from.
"""

import math

import numpy as np

BATCH_SIZE = 64
LEARNING_RATE = 2e-3
TASKS = ("digits", "signal", "noisy")
VALIDATION_SHARE = 0.2


def data(task):
    """`(x_train, y_train), (x_test, y_test)`, deterministic; the validation split is held out of both."""
    (x, y), test = _all_data(task)
    keep = len(x) - int(VALIDATION_SHARE * len(x))
    return (x[:keep], y[:keep]), test


def validation(task):
    """`(x_val, y_val)`: the last share of the training data, never trained on, for choosing settings."""
    (x, y), _ = _all_data(task)
    keep = len(x) - int(VALIDATION_SHARE * len(x))
    return x[keep:], y[keep:]


def _all_data(task):
    if task == "noisy":
        # The digits behind heavy input noise, a fixed draw per image: a harder task where the
        # model needs all its layers and high sparsity hurts sooner.
        (x, y), (x_test, y_test) = _all_data("digits")
        rng = np.random.default_rng(1)
        x = (x + rng.normal(scale=0.45, size=x.shape)).astype("float32")
        x_test = (x_test + rng.normal(scale=0.45, size=x_test.shape)).astype("float32")
        return (x, y), (x_test, y_test)
    if task == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = (digits.images / 16.0).astype("float32")[..., None]
        y = digits.target.astype("int32")
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
        return (x_train, y_train), (x_test, y_test)
    # A generated 1-D task: which of 6 frequency bands a noisy sine of random phase and amplitude is in.
    rng = np.random.default_rng(0)
    n, length, classes = 4000, 64, 6
    y = rng.integers(0, classes, n).astype("int32")
    frequency = 3.0 + 2.0 * y + rng.uniform(-0.6, 0.6, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    amplitude = rng.uniform(0.5, 1.5, n)
    t = np.arange(length) / length
    x = amplitude[:, None] * np.sin(2 * np.pi * frequency[:, None] * t + phase[:, None])
    x = (x + rng.normal(scale=0.7, size=x.shape)).astype("float32")
    return (x[:3000], y[:3000]), (x[3000:], y[3000:])


def build(keras, task):
    layers = keras.layers
    if task in ("digits", "noisy"):
        inputs = keras.Input((8, 8, 1))
        x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
        x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(64, activation="relu")(x)
        outputs = layers.Dense(10)(x)
    else:
        inputs = keras.Input((64,))
        x = layers.Dense(256, activation="relu")(inputs)
        x = layers.Dense(128, activation="relu")(x)
        outputs = layers.Dense(6)(x)
    return keras.Model(inputs, outputs)


def compile_model(keras, model, learning_rate=LEARNING_RATE):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def steps_per_epoch(x):
    return math.ceil(len(x) / BATCH_SIZE)


def pruning_frequency(pruning_steps):
    """The same mask-update frequency as `tfsparse.prune_and_finetune`'s default."""
    return max(1, pruning_steps // 20)


def schedule_end_step(pruning_steps):
    """The last mask update inside the pruning phase, as `tfsparse.prune_and_finetune` places it."""
    frequency = pruning_frequency(pruning_steps)
    return (pruning_steps - 1) // frequency * frequency


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), axis=-1) == y))


def kernel_sparsity(weights_by_layer):
    """The share of zeros over all kernels (rank >= 2 weights)."""
    kernels = [w for layer in weights_by_layer for w in layer if w.ndim >= 2]
    return sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
