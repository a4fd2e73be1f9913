"""Batch normalization folded into the layer before it, and quantization-aware training on the folded model."""

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse.quantization import QuantizeWrapper, batch_norm_folds, fold_batch_norms, quantize_aware

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _randomize_batch_norms(model, seed=0):
    """Statistics and affine parameters far from the identity, so that a missed fold shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, channels),
                    rng.normal(size=channels),
                    rng.normal(size=channels),
                    rng.uniform(0.2, 3.0, channels),
                ]
            )
    return model


def conv_relu():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv1D(4, 1, name="conv1d")(keras.layers.Reshape((64, 6))(x))
    x = keras.layers.BatchNormalization(name="bn_1d")(x)
    return keras.Model(inputs, x, name="conv_relu")


def depthwise():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.ReLU(6.0)(x), name="depthwise_bn")


def dense():
    inputs = keras.Input((5, 7))
    x = keras.layers.Dense(6, name="projection")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)), name="dense_bn")


def branching():
    """conv -> bn feeds two branches (folds); `shared` also feeds a residual (stays); bn after
    an activation or an add stays."""
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    a = keras.layers.Conv2D(4, 1, activation="relu", name="branch")(x)
    a = keras.layers.BatchNormalization(name="bn_after_relu")(a)
    b = keras.layers.Add(name="add")([a, x])
    b = keras.layers.BatchNormalization(name="bn_after_add")(b)
    shared = keras.layers.Conv2D(4, 1, name="shared")(b)
    c = keras.layers.BatchNormalization(name="bn_shared")(shared)
    outputs = keras.layers.Add(name="residual")([c, shared])
    return keras.Model(inputs, outputs, name="branching")


CASES = {
    "conv_relu": (conv_relu, {"bn": "conv", "bn_1d": "conv1d"}),
    "depthwise": (depthwise, {"bn": "depthwise"}),
    "dense": (dense, {"bn": "projection"}),
    "branching": (branching, {"bn": "conv"}),
}


@pytest.mark.parametrize("name", CASES)
def test_folded_model_computes_the_inference_outputs_without_the_folded_batch_norms(name):
    build, expected = CASES[name]
    keras.utils.set_random_seed(0)
    model = _randomize_batch_norms(build())
    assert batch_norm_folds(model) == expected
    folded = fold_batch_norms(model)
    x = np.random.default_rng(1).normal(size=(4, *model.input_shape[1:])).astype("float32")
    before = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), before, atol=1e-5, rtol=1e-5)
    names = {layer.name for layer in folded.layers}
    assert not names & set(expected)  # folded normalizations are gone ...
    left = {layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert left - set(expected) <= names  # ... the others stay
    for producer in expected.values():
        assert folded.get_layer(producer).use_bias
    assert [layer.name for layer in model.layers if layer.name in expected] == list(expected)  # original kept


def test_sequential_model_folds_and_keeps_its_outputs():
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, use_bias=False), keras.layers.BatchNormalization()]
    )
    _randomize_batch_norms(model, seed=3)
    x = np.random.default_rng(2).normal(size=(3, 6)).astype("float32")
    folded = fold_batch_norms(model)
    assert len(folded.layers) == 2  # input, dense
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)), atol=1e-5)


def test_pruned_and_stripped_model_keeps_its_zeros_through_folding():
    keras.utils.set_random_seed(0)
    model = _randomize_batch_norms(conv_relu())
    pruned = tfsparse.prune_oneshot(model, 0.6, criterion="magnitude")
    folded = fold_batch_norms(pruned)
    for name in ("conv", "conv1d"):
        original, kernel = (
            np.asarray(pruned.get_layer(name).kernel),
            np.asarray(folded.get_layer(name).kernel),
        )
        assert (original == 0).mean() >= 0.55
        np.testing.assert_array_equal(kernel == 0, original == 0)


def test_quantize_aware_folds_batch_norm_by_default_and_can_keep_it():
    keras.utils.set_random_seed(0)
    model = _randomize_batch_norms(branching())
    wrapped = {
        layer.layer.name for layer in quantize_aware(model).layers if isinstance(layer, QuantizeWrapper)
    }
    assert "bn" not in wrapped and {"bn_after_relu", "bn_after_add", "bn_shared"} <= wrapped
    unfolded = quantize_aware(model, fold_batch_norm=False)
    assert "bn" in {layer.layer.name for layer in unfolded.layers if isinstance(layer, QuantizeWrapper)}
    with pytest.raises(ValueError, match="fold_batch_norm"):
        quantize_aware(model, fold_batch_norm="yes")


def _conv_bn_cnn():
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="conv_bn_cnn")


def _op_counts(flatbuffer):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    names = [node["op_name"] for node in interpreter._get_ops_details()]
    return {op: names.count(op) for op in ("MUL", "ADD")}


def test_int8_file_of_folded_qat_model_has_no_multiply_or_add_beyond_the_ptq_file(digits):
    x, y = digits
    keras.utils.set_random_seed(0)
    model = _conv_bn_cnn()
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)  # moves the batch-norm statistics
    float_model = tfsparse.prune_oneshot(model, 0.5, criterion="magnitude")
    ptq = tfsparse.export.to_tflite(float_model, sparse=False, quantize="int8", representative_data=x[:64])
    qat = quantize_aware(float_model)
    qat.compile(keras.optimizers.Adam(1e-3), LOSS)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    # to_tflite raises unless the file's outputs are within the int8 tolerance of the Keras model.
    folded_file = tfsparse.export.to_tflite(qat, sparse=False, quantize="int8", representative_data=x[:64])
    unfolded = quantize_aware(float_model, fold_batch_norm=False)
    unfolded(x[:64], training=True)  # sets its ranges (the first training batch does)
    unfolded_file = tfsparse.export.to_tflite(
        unfolded, sparse=False, quantize="int8", representative_data=x[:64]
    )
    ptq_ops, folded_ops, unfolded_ops = _op_counts(ptq), _op_counts(folded_file), _op_counts(unfolded_file)
    assert all(folded_ops[op] <= ptq_ops[op] for op in folded_ops), (folded_ops, ptq_ops)
    assert unfolded_ops["MUL"] > ptq_ops["MUL"]  # without folding, each normalization is a MUL
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=folded_file)
    interpreter.allocate_tensors()
    logits = []
    for sample in x[:100]:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    keras_logits = np.asarray(qat.predict(x[:100], verbose=0))
    assert np.mean(np.argmax(logits, axis=1) == keras_logits.argmax(axis=1)) >= 0.95
    # The pruned zeros are in the file: folding scaled them, and scaling a zero leaves it zero.
    report = tfsparse.analysis.tflite_sparsity_report(folded_file)
    kernels = [row for row in report.rows if row.dtype == "int8" and len(row.shape) > 1]
    keras_zeros = [
        int((np.asarray(layer.layer.kernel) == 0).sum())
        for layer in qat.layers
        if isinstance(layer, QuantizeWrapper) and layer.quantizes_kernel
    ]
    assert sorted(row.size - row.nonzeros for row in kernels) == sorted(keras_zeros)


def test_fold_batch_norms_refuses_what_is_not_a_keras_model():
    with pytest.raises(ValueError, match="`model` must be a Keras model"):
        fold_batch_norms("model.keras")
