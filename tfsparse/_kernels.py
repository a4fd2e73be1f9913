"""What a Dense or convolution layer computes, with a kernel given in place of its own.

Shared by the wrappers that compute on a transformed kernel (fake-quantized, clustered), so that
gradients reach both the transformed kernel's sources and the layer's bias.
"""

from __future__ import annotations

import keras
from keras import ops


def is_depthwise(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a depthwise convolution (kernel (..., in, multiplier))."""
    return isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D))


def _is_convolution(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))


def computes_on_kernel(layer: keras.layers.Layer) -> bool:
    """Whether `call_with_kernel` can run `layer`: Dense, Conv1D/2D/3D, DepthwiseConv1D/2D."""
    return isinstance(layer, keras.layers.Dense) or _is_convolution(layer) or is_depthwise(layer)


def _add_bias(layer, outputs, channels_last: bool):
    if getattr(layer, "bias", None) is None:
        return outputs
    if channels_last:
        return ops.add(outputs, layer.bias)
    return ops.add(outputs, ops.reshape(layer.bias, (1, -1) + (1,) * (len(outputs.shape) - 2)))


def call_with_kernel(layer: keras.layers.Layer, inputs, kernel):
    """What `layer.call(inputs)` computes, with `kernel` in place of `layer.kernel`."""
    if isinstance(layer, keras.layers.Dense):
        outputs = _add_bias(layer, ops.matmul(inputs, kernel), True)
    else:
        if is_depthwise(layer):
            outputs = ops.depthwise_conv(
                inputs,
                kernel,
                strides=layer.strides,
                padding=layer.padding,
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )
        else:
            outputs = layer.convolution_op(inputs, kernel)
        outputs = _add_bias(layer, outputs, layer.data_format == "channels_last")
    return layer.activation(outputs) if layer.activation is not None else outputs
