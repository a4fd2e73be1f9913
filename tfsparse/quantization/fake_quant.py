"""The arithmetic of int8 fake quantization as TFLite does it, in keras.ops (every backend).

Weights: symmetric per output channel, 255 levels in [-127, 127] (`narrow_range`), zero point 0,
so a zero weight stays exactly zero. Activations: asymmetric per tensor, 256 levels over a range
that always holds 0, tracked as an exponential moving average of each batch's min and max.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# An activation range must not be empty.
_SMALLEST_RANGE = 1e-6
# The range of a channel whose weights are all zero (pruned away): any range keeps them 0, and a
# tiny one would make the int32 bias scale (input scale * weight scale) overflow in TFLite.
_EMPTY_CHANNEL_RANGE = 1.0


def fake_quantize_weight(kernel, depthwise: bool = False):
    """`kernel` rounded to int8 per output channel and back to float, with a straight-through gradient.

    Args:
        kernel: a kernel with output channels on the last axis; with `depthwise=True` a depthwise
            kernel (h, w, in, multiplier), whose TFLite channels are in * multiplier.
        depthwise: whether `kernel` is a depthwise kernel.

    Returns:
        The fake-quantized kernel, same shape and dtype.

    Example:

    ```python
    quantized = fake_quantize_weight(layer.kernel)
    ```
    """
    shape = ops.shape(kernel)
    flat = ops.reshape(kernel, (*shape[:-2], shape[-2] * shape[-1])) if depthwise else kernel
    reduce_axes = tuple(range(len(flat.shape) - 1))
    peak = ops.max(ops.abs(flat), axis=reduce_axes)
    peak = ops.where(peak > 0, peak, _EMPTY_CHANNEL_RANGE)
    quantized = keras.quantizers.fake_quant_with_min_max_vars(
        flat, -peak, peak, num_bits=8, narrow_range=True, axis=-1
    )
    return ops.reshape(quantized, shape) if depthwise else quantized


def weight_scales(kernel, depthwise: bool = False):
    """The per-channel scale TFLite stores for `kernel` (max |w| / 127), as numpy.

    Args:
        kernel: as for `fake_quantize_weight`.
        depthwise: whether `kernel` is a depthwise kernel.

    Returns:
        A float numpy array with one scale per output channel.

    Example:

    ```python
    scales = weight_scales(layer.kernel)
    ```
    """
    kernel = np.asarray(ops.convert_to_numpy(kernel))
    flat = kernel.reshape(*kernel.shape[:-2], -1) if depthwise else kernel
    peak = np.abs(flat).reshape(-1, flat.shape[-1]).max(axis=0)
    return (np.where(peak > 0, peak, _EMPTY_CHANNEL_RANGE) / 127.0).astype("float32")


def updated_range(minimum, maximum, seen, values, decay: float):
    """The activation range after one more batch: the batch's own range for the first batch,
    then an exponential moving average; always widened to hold 0 (TFLite's zero point must exist).

    Args:
        minimum: the current range's lower end (scalar).
        maximum: the current range's upper end (scalar).
        seen: 0 before the first batch, 1 after.
        values: the batch's activations.
        decay: weight of the old range in the average, in [0, 1).

    Returns:
        `(minimum, maximum)`, the new range.

    Example:

    ```python
    low, high = updated_range(low, high, seen, x, decay=0.99)
    ```
    """
    values = ops.stop_gradient(values)
    batch_min = ops.minimum(ops.min(values), 0.0)
    batch_max = ops.maximum(ops.max(values), 0.0)
    first = ops.equal(seen, 0)
    new_min = ops.where(first, batch_min, decay * minimum + (1.0 - decay) * batch_min)
    new_max = ops.where(first, batch_max, decay * maximum + (1.0 - decay) * batch_max)
    return new_min, new_max


def fake_quantize_activation(values, minimum, maximum):
    """`values` rounded to 256 levels over [minimum, maximum] and back, straight-through gradient.

    Args:
        values: activations.
        minimum: the range's lower end (<= 0).
        maximum: the range's upper end (>= 0).

    Returns:
        The fake-quantized activations.

    Example:

    ```python
    y = fake_quantize_activation(x, -1.0, 3.0)
    ```
    """
    maximum = ops.maximum(maximum, minimum + _SMALLEST_RANGE)
    return keras.quantizers.fake_quant_with_min_max_vars(
        values, minimum, maximum, num_bits=8, narrow_range=False
    )
