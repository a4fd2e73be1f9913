"""Tiny models and data shared by the tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    # Each test starts with Keras' automatic layer names counted from zero ('conv2d', 'dense', ...),
    # whatever ran before it.
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


def make_cnn(input_shape=(8, 8, 1), classes=10) -> keras.Model:
    """A functional CNN: conv, batch norm, depthwise, pooling, dense."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def make_digits_cnn() -> keras.Model:
    """The demo's CNN for 8x8 digits: enough capacity to keep its accuracy at 90% sparsity."""
    from tfsparse.demo import build_model

    return build_model()


class SubclassedModel(keras.Model):
    """A subclassed model: no graph of layers for clone_model or FLOP counting to follow."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def make_mlp(features=16, classes=4) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(classes),
        ],
        name="tiny_mlp",
    )


@pytest.fixture
def cnn():
    return make_cnn()


@pytest.fixture
def mlp():
    return make_mlp()


@pytest.fixture
def digits():
    """scikit-learn's 8x8 digits (shipped with the package): 600 images, float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images[:600] / 16.0).astype("float32")[..., None]
    y = data.target[:600].astype("int32")
    return x, y


@pytest.fixture
def digits_all():
    """All 1797 of scikit-learn's digits, split 1400 / 397 into train and test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


@pytest.fixture
def tabular():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int32")
    return x, y


@pytest.fixture(scope="session")
def trained_digits_cnn():
    """The demo's digits CNN after 4 epochs on 1,000 digits; 300 validation and 497 test digits."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    model = make_digits_cnn()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1000], y[:1000], epochs=4, batch_size=64, verbose=0)
    return model, (x[1000:1300], y[1000:1300]), (x[1300:], y[1300:])
