"""`calibrate_logits_range`: the int8 range of a classifier's logits chosen for its predictions.

A min/max range spends most of the 256 int8 levels of a logits output on very negative logits,
which no prediction depends on; the step between levels (0.15 on the digits CNN, logits in
[-30, 7]) then exceeds the margin between the two top classes of some inputs, both round to the
same int8 value, and argmax takes the lower class (the digits the int8 digits CNN lost against
float on the benchmark's split were such ties). The range kept here is the one, among fractions of
the min/max range on either side, whose rounded logits give the softmax closest (Kullback-Leibler)
to the unrounded ones on calibration data: it clips only where the softmax does not notice and
rounds finer where it does.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfsparse.quantization.wrapper import QuantizeWrapper

# The ends of the candidate ranges, as fractions of the calibration data's min and max.
_FRACTIONS = np.linspace(1.0, 0.1, 37)


def fake_quantize_numpy(values: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
    """`values` rounded to 256 levels over `[minimum, maximum]` (zero point nudged as TFLite does).

    Args:
        values: activations.
        minimum: the range's lower end (<= 0), broadcastable against `values`.
        maximum: the range's upper end (> minimum), broadcastable against `values`.

    Returns:
        The rounded values, float64.

    Example:

    ```python
    fake_quantize_numpy(np.array([0.1, 2.0]), -1.0, 1.0)
    ```
    """
    scale = (maximum - minimum) / 255.0
    zero_point = np.round(np.clip(-minimum / scale, 0.0, 255.0))
    low, high = -zero_point * scale, (255.0 - zero_point) * scale
    return np.floor((np.clip(values, low, high) - low) / scale + 0.5) * scale + low


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def best_logits_range(logits: np.ndarray) -> tuple[float, float]:
    """The int8 range for `logits` whose rounding changes their softmax least (mean KL divergence).

    Candidates: every pair of fractions of the logits' own min and max (1.0 down to 0.1); among
    equally good ones the widest.

    Args:
        logits: array of shape (samples, classes).

    Returns:
        `(minimum, maximum)`, with minimum <= 0 < maximum.

    Example:

    ```python
    low, high = best_logits_range(model.predict(x))
    ```
    """
    logits = np.asarray(logits, dtype="float64").reshape(-1, np.shape(logits)[-1])
    low, high = min(float(logits.min()), 0.0), max(float(logits.max()), 1e-6)
    reference = _log_softmax(logits)
    probabilities = np.exp(reference)
    highs = (high * _FRACTIONS)[:, None, None]
    best = (np.inf, low, high)
    for fraction in _FRACTIONS:
        minimum = low * fraction
        rounded = fake_quantize_numpy(logits[None], minimum, highs)
        divergence = np.mean(np.sum(probabilities * (reference - _log_softmax(rounded)), axis=-1), axis=-1)
        index = int(np.argmin(divergence))
        if divergence[index] < best[0] - 1e-12:
            best = (float(divergence[index]), minimum, float(highs[index, 0, 0]))
    return best[1], best[2]


def _output_wrappers(model: keras.Model) -> list[QuantizeWrapper]:
    wrappers = []
    for tensor in model.outputs:
        producers = [layer for layer in model.layers if any(tensor is out for out in _outputs(layer))]
        if not producers or not isinstance(producers[0], QuantizeWrapper):
            name = producers[0].name if producers else tensor.name
            raise ValueError(
                f"`calibrate_logits_range` takes a model from `tfsparse.quantization.quantize_aware` whose "
                f"outputs are computed by quantized layers; output '{name}' is not. Pass the model "
                "returned by `quantize_aware`."
            )
        wrappers.append(producers[0])
    return wrappers


def _outputs(layer: keras.layers.Layer) -> list:
    # `layer.output` raises for a layer called more than once; such a layer is not a model output here.
    try:
        return keras.tree.flatten(layer.output)
    except (AttributeError, ValueError):
        return []


def calibrate_logits_range(model: keras.Model, x, batch_size: int = 256) -> dict[str, tuple[float, float]]:
    """Sets the int8 range of a quantization-aware classifier's logits for its predictions.

    Call it after fitting a `quantize_aware` model whose outputs are logits (no softmax), before
    `tfsparse.export.to_tflite`: each output layer's range becomes the one whose rounding keeps
    the softmax of the logits closest to the unrounded one on `x` (see the module docstring), so
    that the int8 logits keep the order of the top classes. The file takes the new ranges.

    Args:
        model: a model from `quantize_aware` whose outputs are logits.
        x: calibration inputs (a few hundred training samples), as for `model.predict`.
        batch_size: batch size of the forward pass.

    Returns:
        `{output layer name: (minimum, maximum)}`, the ranges set.

    Raises:
        ValueError: a model output that no `QuantizeWrapper` computes.

    Example:

    ```python
    qat.fit(x_train, y_train, epochs=2)
    tfsparse.quantization.calibrate_logits_range(qat, x_train[:500])
    tfsparse.export.to_tflite(qat, quantize="int8", representative_data=x_train[:200])
    ```
    """
    ranges = {}
    for wrapper in _output_wrappers(model):
        probe = keras.Model(model.inputs, wrapper.input)
        inputs = probe.predict(x, batch_size=batch_size, verbose=0)
        samples = len(keras.tree.flatten(inputs)[0])
        logits = np.concatenate(
            [
                np.asarray(
                    ops.convert_to_numpy(
                        wrapper.output_before_rounding(
                            keras.tree.map_structure(lambda a, s=start: a[s : s + batch_size], inputs)
                        )
                    )
                )
                for start in range(0, samples, batch_size)
            ]
        )
        minimum, maximum = best_logits_range(logits)
        wrapper.output_range.minimum.assign(minimum)
        wrapper.output_range.maximum.assign(maximum)
        wrapper.output_range.seen.assign(1.0)
        ranges[wrapper.name] = (minimum, maximum)
    return ranges
