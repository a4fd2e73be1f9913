"""The int8 range of a classifier's logits chosen for its predictions (calibrate_logits_range)."""

import keras
import numpy as np
import pytest
from conftest import make_mlp

import tfsparse
from tfsparse.quantization import calibrate_logits_range, quantize_aware
from tfsparse.quantization.calibrate import best_logits_range, fake_quantize_numpy


def _ties(logits):
    top = np.sort(logits, axis=-1)
    return int(np.sum(top[:, -1] == top[:, -2]))


def _logits_with_a_long_negative_tail(samples=400, classes=10, seed=0):
    """Logits in about [-30, 7]: most classes far below, the top two often close together."""
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-30.0, -8.0, size=(samples, classes))
    top = rng.integers(0, classes, samples)
    second = (top + 1 + rng.integers(0, classes - 1, samples)) % classes
    logits[np.arange(samples), top] = rng.uniform(-4.0, 7.0, samples)
    logits[np.arange(samples), second] = logits[np.arange(samples), top] - rng.uniform(0.0, 0.3, samples)
    return logits


def test_fake_quantize_numpy_matches_keras_fake_quantization():
    # Random values: none falls on a rounding midpoint, where float32 and float64 may round apart.
    values = np.random.default_rng(0).uniform(-3.0, 5.0, 500).astype("float32")
    expected = keras.quantizers.fake_quant_with_min_max_vars(values, -2.0, 4.0, num_bits=8)
    np.testing.assert_allclose(fake_quantize_numpy(values, -2.0, 4.0), np.asarray(expected), atol=1e-5)


def test_best_logits_range_clips_the_unused_tail_and_keeps_the_top_classes_apart():
    logits = _logits_with_a_long_negative_tail()
    low, high = best_logits_range(logits)
    assert logits.min() * 0.75 < low < 0.0 < high <= logits.max() + 1e-6
    minmax = fake_quantize_numpy(logits, logits.min(), logits.max())
    chosen = fake_quantize_numpy(logits, low, high)
    assert _ties(chosen) < 0.75 * _ties(minmax)  # 59 against 89
    same = np.mean(chosen.argmax(axis=1) == logits.argmax(axis=1))
    assert same > np.mean(minmax.argmax(axis=1) == logits.argmax(axis=1)) + 0.03  # 94% against 89%


def test_best_logits_range_keeps_the_min_max_range_when_nothing_can_be_clipped():
    # Two classes, both always near the top: clipping either end changes the softmax.
    logits = np.random.default_rng(1).uniform(-1.0, 1.0, size=(200, 2))
    low, high = best_logits_range(logits)
    assert low == pytest.approx(logits.min(), rel=0.05) and high == pytest.approx(logits.max(), rel=0.05)


def test_calibrated_range_is_set_on_the_output_layer_and_taken_by_the_int8_file():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    model = make_mlp()
    # Logits with a long negative tail, as a trained classifier has.
    *_, last = (layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 8.0, bias - 20.0 * (np.arange(bias.size) % 2)])
    qat = quantize_aware(tfsparse.prune_oneshot(model, 0.5, criterion="magnitude"))
    qat(x, training=True)  # min/max ranges from one batch
    output = qat.layers[-1]
    before = float(output.output_range.minimum.numpy()), float(output.output_range.maximum.numpy())
    ranges = calibrate_logits_range(qat, x)
    low, high = ranges[output.name]
    assert (float(output.output_range.minimum.numpy()), float(output.output_range.maximum.numpy())) == (
        pytest.approx(low),
        pytest.approx(high),
    )
    assert high - low < 0.8 * (before[1] - before[0])
    flatbuffer = tfsparse.export.to_tflite(qat, sparse=False, quantize="int8", representative_data=x[:64])
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    scales = [
        detail["quantization"][0] for detail in interpreter.get_tensor_details() if detail["dtype"] == np.int8
    ]
    assert any(scale == pytest.approx((high - low) / 255, rel=1e-4) for scale in scales)


def test_calibrate_logits_range_refuses_a_model_that_is_not_quantization_aware():
    with pytest.raises(ValueError, match="quantize_aware"):
        calibrate_logits_range(make_mlp(), np.zeros((4, 16), "float32"))
