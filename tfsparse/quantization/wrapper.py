"""`QuantizeWrapper`: runs a layer on fake-quantized int8 weights and fake-quantizes its output.

Dense, convolution and depthwise convolution layers compute with their kernel rounded to int8 per
output channel (TFLite's scheme); with `preserve_sparsity` the kernel is multiplied by a fixed mask
of its non-zeros first, so pruned weights get no gradient and stay exactly zero. Every wrapped
layer's output is fake-quantized per tensor over a range learned during training.
"""

from __future__ import annotations

import keras
from keras import ops

from tfsparse._kernels import call_with_kernel, computes_on_kernel, is_depthwise
from tfsparse.clustering.wrapper import ClusterWeights
from tfsparse.quantization import fake_quant
from tfsparse.quantization.activation import DEFAULT_DECAY, ActivationRange, check_decay


def has_quantized_kernel(layer: keras.layers.Layer) -> bool:
    """Whether `QuantizeWrapper` computes `layer` on an int8 kernel: Dense, Conv1D-3D, depthwise,
    or a `ClusterWeights` around one (its centroids then train under the rounding)."""
    return computes_on_kernel(layer) or isinstance(layer, ClusterWeights)


def kernel_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The Dense or convolution layer whose computation `QuantizeWrapper` runs for `layer`."""
    return layer.layer if isinstance(layer, ClusterWeights) else layer


@keras.saving.register_keras_serializable(package="tfsparse")
class QuantizeWrapper(keras.layers.Wrapper):
    """Wraps a layer for quantization-aware training (int8 weights and output, simulated in float).

    Usually created by `tfsparse.quantization.quantize_aware`.

    Args:
        layer: the layer to wrap. Dense, Conv1D/2D/3D and DepthwiseConv1D/2D layers get an int8
            kernel, and so does a `tfsparse.clustering.ClusterWeights` around one (its centroids
            train under the rounding, so the clusters and zeros stay); any other layer keeps its
            weights and only has its output quantized.
        preserve_sparsity: keep the kernel's zeros at zero through training (a fixed mask of the
            non-zeros the kernel has when the wrapper is built).
        range_decay: weight of the old output range when a training batch updates it, in [0, 1).
        converter_rounds_kernel: leave the rounding of the kernel out of the graph (for export:
            see `for_converter`).
        **kwargs: `keras.layers.Wrapper` arguments (`name`, ...).

    Example:

    ```python
    wrapped = tfsparse.quantization.QuantizeWrapper(keras.layers.Dense(10))
    ```
    """

    def __init__(
        self,
        layer,
        preserve_sparsity: bool = True,
        range_decay: float = DEFAULT_DECAY,
        converter_rounds_kernel: bool = False,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                f"Argument `layer` must be a Keras layer. Received: layer={layer!r} of type {type(layer).__name__}"
            )
        if not isinstance(preserve_sparsity, bool):
            raise ValueError(
                f"Argument `preserve_sparsity` must be True or False. Received: preserve_sparsity={preserve_sparsity!r}"
            )
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **kwargs)
        self.preserve_sparsity = preserve_sparsity
        self.range_decay = check_decay(range_decay)
        self.converter_rounds_kernel = bool(converter_rounds_kernel)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.quantizes_kernel = has_quantized_kernel(self.layer)
        # A clustered layer keeps its own zeros (its mask, when it preserves sparsity).
        if self.quantizes_kernel and self.preserve_sparsity and not isinstance(self.layer, ClusterWeights):
            kernel = ops.convert_to_numpy(self.layer.kernel)
            self.kernel_mask = self.add_weight(
                name="kernel_mask",
                shape=kernel.shape,
                initializer=keras.initializers.Constant((kernel != 0).astype("float32")),
                trainable=False,
            )
        self.output_range = ActivationRange(self, "output")
        self.built = True

    def quantized_kernel(self):
        """The kernel the layer computes with: masked (when sparsity is preserved) and rounded to int8."""
        if isinstance(self.layer, ClusterWeights):
            kernel = self.layer.clustered_kernel()
        else:
            kernel = self.layer.kernel
            if self.preserve_sparsity:
                kernel = kernel * ops.cast(self.kernel_mask, kernel.dtype)
        if self.converter_rounds_kernel:
            return kernel
        return fake_quant.fake_quantize_weight(kernel, depthwise=is_depthwise(kernel_layer(self.layer)))

    def output_before_rounding(self, inputs, training=None):
        """What the layer computes on its int8 kernel, before its output is rounded to int8."""
        if self.quantizes_kernel:
            return call_with_kernel(kernel_layer(self.layer), inputs, self.quantized_kernel())
        return self.layer(inputs, training=training)

    def call(self, inputs, training=None):
        return self.output_range(self.output_before_rounding(inputs, training), training, self.range_decay)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "preserve_sparsity": self.preserve_sparsity,
            "range_decay": self.range_decay,
            "converter_rounds_kernel": self.converter_rounds_kernel,
        }
