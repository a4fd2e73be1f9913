"""`quantize_aware`: a copy of a model that trains with int8 fake quantization, keeping its zeros."""

from __future__ import annotations

import keras
from keras import tree

from tfsparse.quantization.activation import DEFAULT_DECAY, QuantizeActivation, check_decay
from tfsparse.quantization.folding import fold_batch_norms
from tfsparse.quantization.wrapper import QuantizeWrapper, kernel_layer
from tfsparse.wrapper import accepts_argument

# Layers that TFLite runs in int8 with the input's scale: their output needs no range of its own.
_SAME_SCALE = (
    keras.layers.InputLayer,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Dropout,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
)


def is_quantize_aware(model: keras.Model) -> bool:
    """Whether `model` holds layers from `quantize_aware` (`QuantizeWrapper`, `QuantizeActivation`).

    Args:
        model: a Keras model.

    Returns:
        True for a model made by `quantize_aware`.

    Example:

    ```python
    assert tfsparse.quantization.is_quantize_aware(tfsparse.quantization.quantize_aware(model))
    ```
    """
    return any(isinstance(layer, (QuantizeWrapper, QuantizeActivation)) for layer in model.layers)


def _functional(model: keras.Model, fold_batch_norm: bool) -> keras.Model:
    from tfsparse.export._files import plain_model  # strips pruning wrappers; imports no TensorFlow

    model = plain_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"`quantize_aware` takes a model without nested models; layer '{layer.name}' is a "
                f"{type(layer).__name__}. Flatten it first: build one functional model of its layers."
            )
        if isinstance(layer, (QuantizeWrapper, QuantizeActivation)):
            raise ValueError(
                f"Layer '{layer.name}' is already quantization-aware; pass the original model to `quantize_aware`."
            )
    return fold_batch_norms(model) if fold_batch_norm else model


def quantize_aware(
    model: keras.Model,
    preserve_sparsity: bool = True,
    range_decay: float = DEFAULT_DECAY,
    fold_batch_norm: bool = True,
) -> keras.Model:
    """A copy of `model` that simulates TFLite's int8 inference while it trains (QAT).

    First, each batch normalization that directly follows a Dense or convolution layer without
    activation is folded into its kernel and bias (`fold_batch_norms`, inference statistics), as
    TFLite's converter folds it: the model trains and rounds the one convolution the file runs,
    and the normalization's statistics stay as they were. Then every layer that changes the scale
    of its values (Dense, convolutions, batch normalization left unfolded, activations, merges,
    ...) is wrapped in `QuantizeWrapper`: Dense and convolution kernels are
    rounded to int8 per output channel, outputs to int8 per tensor over ranges learned during
    training. Inputs get a `QuantizeActivation`. Max pooling, reshapes, padding and dropout keep
    their input's scale in TFLite and are left as they are. Fit the copy for a few epochs (ranges
    are set by the first training batch), then export it with
    `tfsparse.export.to_tflite(qat_model, quantize="int8", representative_data=...)`, which takes
    its ranges and its rounding. For a classifier with logits outputs, call
    `tfsparse.quantization.calibrate_logits_range` before exporting: a min/max range of the logits
    rounds close top classes to the same int8 value. Fitting to the float model's outputs
    (`tfsparse.Distiller(student=qat_model, teacher=model)`) changes fewer predictions than fitting
    to the labels, which also retrains the model.

    A clustered model (from `tfsparse.clustering.cluster_weights`, not stripped) trains its
    centroids under the int8 rounding, so its clusters and zeros survive into the file
    (cluster-preserving QAT): prune -> cluster -> `quantize_aware` -> `to_tflite(quantize="int8")`.

    Args:
        model: a Sequential or functional model, pruned (stripped first), clustered or plain.
        preserve_sparsity: keep every zero weight of the kernels exactly zero through training and
            into the int8 file.
        range_decay: weight of the old range when a training batch updates it, in [0, 1).
        fold_batch_norm: fold batch normalizations into the layer before them first (their
            moving statistics must be current: after one-shot pruning, re-estimate them, see
            `fold_batch_norms`). False quantizes each on its own, and training updates its
            statistics (an int8 MUL and ADD in the file, as TFLite runs an unfolded normalization).

    Returns:
        A functional model of the same inputs and outputs, with the same weights (folded
        batch normalizations inside their layer's kernel and bias).

    Raises:
        ValueError: a subclassed or nested model, or one already quantization-aware.

    Example:

    ```python
    qat = tfsparse.quantization.quantize_aware(tfsparse.strip_pruning(pruned))
    qat.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    qat.fit(x, y, epochs=2)
    tfsparse.export.to_tflite(qat, "model.tflite", quantize="int8", representative_data=x[:200])
    ```
    """
    if not isinstance(preserve_sparsity, bool):
        raise ValueError(
            f"Argument `preserve_sparsity` must be True or False. Received: preserve_sparsity={preserve_sparsity!r}"
        )
    if not isinstance(fold_batch_norm, bool):
        raise ValueError(
            f"Argument `fold_batch_norm` must be True or False. Received: fold_batch_norm={fold_batch_norm!r}"
        )
    range_decay = check_decay(range_decay)
    model = _functional(model, fold_batch_norm)
    inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor.name) for tensor in model.inputs
    ]
    quantized = {}  # id(tensor) -> the tensor, for tensors already on an int8 grid
    quantizers = {}  # id(tensor) -> its QuantizeActivation output

    def clone_function(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if layer.built:
            copy.build_from_config(layer.get_build_config())
            copy.set_weights(layer.get_weights())
        if isinstance(layer, _SAME_SCALE):
            return copy
        return QuantizeWrapper(copy, preserve_sparsity=preserve_sparsity, range_decay=range_decay)

    def on_grid(tensor):
        if id(tensor) in quantized or not isinstance(tensor, keras.KerasTensor):
            return tensor
        if id(tensor) not in quantizers:
            name = f"quantize_{tensor.name}" if any(tensor is t for t in inputs) else None
            quantizers[id(tensor)] = (tensor, QuantizeActivation(range_decay=range_decay, name=name)(tensor))
        return quantizers[id(tensor)][1]

    def call_function(layer, *args, **kwargs):
        # A graph node may record `mask=` for a layer whose replacement takes none.
        if "mask" in kwargs and not accepts_argument(layer.call, "mask"):
            kwargs.pop("mask")
        if isinstance(layer, QuantizeWrapper):
            args = tree.map_structure(on_grid, args)
        outputs = layer(*args, **kwargs)
        # A same-scale layer's output is on the grid when its inputs are.
        on = isinstance(layer, QuantizeWrapper) or all(
            id(t) in quantized for t in tree.flatten(args) if isinstance(t, keras.KerasTensor)
        )
        if on:
            for tensor in tree.flatten(outputs):
                quantized[id(tensor)] = tensor
        return outputs

    copy = keras.models.clone_model(
        model,
        # In the structure of `model.input` (a one-element list for a converted Sequential model).
        input_tensors=tree.pack_sequence_as(model.input, inputs),
        clone_function=clone_function,
        call_function=call_function,
    )
    return keras.Model(copy.inputs, copy.outputs, name=f"{model.name}_qat")


def for_converter(model: keras.Model) -> keras.Model:
    """A copy of a `quantize_aware` model for the TFLite converter, computing the same values.

    The converter cannot take a per-channel fake quantization of a Dense kernel: it transposes
    the kernel into FULLY_CONNECTED's (out, in) layout and refuses the transposed quantized axis
    ("'tfl.transpose' op has mismatched quantized axes"). In the copy, Dense kernels enter the
    graph as float (masked) and the converter rounds them itself, per output channel and
    symmetrically over max |w| / 127: the same int8 values the training graph simulates.
    Activation ranges and convolution kernels keep their fake quantization, so the converter uses
    the learned ranges.

    Args:
        model: a model from `quantize_aware`.

    Returns:
        The copy, with the same weights.

    Example:

    ```python
    converted = tf.lite.TFLiteConverter.from_keras_model(for_converter(qat_model))
    ```
    """

    def clone_function(layer):
        config = layer.get_config()
        if isinstance(layer, QuantizeWrapper) and isinstance(kernel_layer(layer.layer), keras.layers.Dense):
            config["converter_rounds_kernel"] = True
        copy = layer.__class__.from_config(config)
        if layer.built:
            copy.build_from_config(layer.get_build_config())
            copy.set_weights(layer.get_weights())
        return copy

    return keras.models.clone_model(model, clone_function=clone_function)
