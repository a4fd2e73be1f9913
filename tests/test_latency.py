"""measure_latency: real medians in Keras and LiteRT, a bigger model slower, bad arguments refused."""

import keras
import numpy as np
import pytest

from tfsparse.analysis import count_flops, measure_latencies, measure_latency
from tfsparse.analysis.latency import _batched


def _convnet(width: int) -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name=f"convnet_{width}")


@pytest.mark.parametrize("runtime", ["keras", "litert"])
def test_a_model_with_far_more_flops_measures_slower(runtime):
    small, big = _convnet(4), _convnet(256)
    assert count_flops(big) > 2000 * count_flops(small)
    small_ms = measure_latency(small, runtime=runtime, repeats=9)
    big_ms = measure_latency(big, runtime=runtime, repeats=9)
    assert 0 < small_ms < big_ms / 3


def test_interleaved_rounds_give_one_median_per_model_in_order():
    small, big = _convnet(4), _convnet(256)
    small_ms, big_ms, small_again_ms = measure_latencies([small, big, small], repeats=9, rounds=3)
    assert small_ms < big_ms / 3 and small_again_ms < big_ms / 3
    with pytest.raises(ValueError, match="`models`"):
        measure_latencies(small)
    with pytest.raises(ValueError, match="`rounds`"):
        measure_latencies([small], rounds=0)


def test_a_larger_litert_batch_takes_longer():
    model = _convnet(32)
    one = measure_latency(model, runtime="litert", repeats=5)
    eight = measure_latency(model, runtime="litert", batch_size=8, repeats=5)
    assert eight > 3 * one


def test_a_folded_batch_computes_what_the_model_computes():
    model = _convnet(4)
    x = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype("float32")
    folded = _batched(model, [((32, 32, 3), "float32")], 3)
    expected = model.predict_on_batch(x).reshape(2, 3, 10)
    np.testing.assert_allclose(folded.predict_on_batch(x.reshape(2, 3, 32, 32, 3)), expected, atol=1e-5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(runtime="onnx"), "runtime"),
        (dict(batch_size=0), "batch_size"),
        (dict(repeats=2.5), "repeats"),
        (dict(warmup=-1), "warmup"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments, message):
    with pytest.raises(ValueError, match=f"`{message}`"):
        measure_latency(_convnet(4), **arguments)


def test_a_model_with_a_free_dimension_is_refused_naming_the_input():
    inputs = keras.Input((None, 3), name="tokens")
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="tokens.*fixed"):
        measure_latency(model)
    with pytest.raises(ValueError, match="Keras model"):
        measure_latency("model.keras")
