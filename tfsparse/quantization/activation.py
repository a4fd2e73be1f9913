"""`QuantizeActivation`: fake quantization of a tensor to int8 over a range learned during training."""

from __future__ import annotations

import keras

from tfsparse.quantization import fake_quant

DEFAULT_DECAY = 0.99


def check_decay(decay) -> float:
    """`decay` as a float in [0, 1), or a ValueError naming it."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(
            f"Argument `range_decay` must be a number in [0, 1). Received: range_decay={decay!r}"
        )
    return float(decay)


class ActivationRange:
    """The three variables of one per-tensor range (min, max, whether a batch was seen) on `layer`."""

    def __init__(self, layer: keras.layers.Layer, prefix: str):
        def variable(name):
            return layer.add_weight(name=f"{prefix}_{name}", shape=(), initializer="zeros", trainable=False)

        self.minimum = variable("min")
        self.maximum = variable("max")
        self.seen = variable("seen")

    def __call__(self, values, training, decay: float):
        """Updates the range on a training batch, then fake-quantizes `values` over it."""
        minimum, maximum = self.minimum, self.maximum
        if training:
            minimum, maximum = fake_quant.updated_range(minimum, maximum, self.seen, values, decay)
            self.minimum.assign(minimum)
            self.maximum.assign(maximum)
            self.seen.assign(1.0)
        return fake_quant.fake_quantize_activation(values, minimum, maximum)


@keras.saving.register_keras_serializable(package="tfsparse")
class QuantizeActivation(keras.layers.Layer):
    """Fake-quantizes its input to int8 (per tensor) over a range tracked during training.

    `quantize_aware` puts one in front of every quantized layer whose input is not already
    quantized (a model input, for one). The range is the first training batch's min and max, then
    their exponential moving average, always holding 0.

    Args:
        range_decay: weight of the old range when a batch updates it, in [0, 1).
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Example:

    ```python
    quantized = tfsparse.quantization.QuantizeActivation(name="image_quantizer")(inputs)
    ```
    """

    def __init__(self, range_decay: float = DEFAULT_DECAY, **kwargs):
        super().__init__(**kwargs)
        self.range_decay = check_decay(range_decay)

    def build(self, input_shape):
        self.range = ActivationRange(self, "output")
        self.built = True

    def call(self, inputs, training=None):
        return self.range(inputs, training, self.range_decay)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "range_decay": self.range_decay}
