"""Quantization-aware training that keeps zeros, and its int8 TFLite file."""

import os

import keras
import numpy as np
import pytest
from conftest import make_cnn, make_digits_cnn

import tfsparse
from tfsparse.quantization import QuantizeActivation, QuantizeWrapper, quantize_aware
from tfsparse.quantization.fake_quant import fake_quantize_weight

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _kernels(model):
    return {
        layer.name: np.asarray(layer.layer.kernel)
        for layer in model.layers
        if isinstance(layer, QuantizeWrapper) and layer.quantizes_kernel
    }


def test_fake_quantized_weight_is_symmetric_int8_per_channel_and_keeps_zeros():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 4)).astype("float32") * np.array([1.0, 0.1, 3.0, 0.0], "float32")
    kernel[rng.random(kernel.shape) < 0.5] = 0.0
    quantized = np.asarray(fake_quantize_weight(kernel))
    scales = np.abs(kernel).max(axis=0) / 127
    scales[3] = 1 / 127  # an all-zero channel gets a unit range (a tiny one overflows TFLite's bias)
    np.testing.assert_allclose(quantized, np.round(kernel / scales) * scales, atol=1e-6)
    assert np.all(quantized[kernel == 0] == 0)
    assert np.all(np.abs(np.round(quantized / scales)) <= 127)


def test_depthwise_kernel_is_quantized_per_output_channel():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 2, 2)).astype("float32") * np.array([[1.0, 10.0], [0.1, 1.0]], "float32")
    quantized = np.asarray(fake_quantize_weight(kernel, depthwise=True))
    scales = np.abs(kernel).reshape(9, 4).max(axis=0).reshape(2, 2) / 127
    np.testing.assert_allclose(quantized, np.round(kernel / scales) * scales, atol=1e-5)


@pytest.fixture(scope="module")
def trained():
    """The digits CNN trained briefly, pruned to 80% in one shot, then 2 epochs of QAT."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    (x_train, y_train), (x_test, y_test) = (x[:1400], y[:1400]), (x[1400:], y[1400:])
    model = make_digits_cnn()
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
    pruned = tfsparse.prune_oneshot(model, 0.8, criterion="magnitude")
    qat = quantize_aware(pruned)
    before = _kernels(qat)
    qat.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    qat.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    return dict(pruned=pruned, qat=qat, before=before, x_train=x_train, x_test=x_test, y_test=y_test)


def test_quantize_aware_wraps_kernels_and_quantizes_the_input(trained):
    qat = trained["qat"]
    wrapped = [layer.layer.name for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert wrapped == ["conv2d", "conv2d_1", "dense", "dense_1"]
    assert [type(layer).__name__ for layer in qat.layers[1:2]] == ["QuantizeActivation"]
    # Pooling and flatten keep their input's scale in TFLite: not wrapped.
    assert {"max_pooling2d", "flatten"} <= {layer.name for layer in qat.layers}


def test_zeros_stay_zero_through_quantization_aware_training(trained):
    after = _kernels(trained["qat"])
    for name, kernel in trained["before"].items():
        zeros = kernel == 0
        assert zeros.mean() == pytest.approx(0.8, abs=0.01)
        assert np.all(after[name][zeros] == 0), name
        assert np.abs(after[name] - kernel)[~zeros].max() > 1e-4, f"{name} did not train"


def test_activation_ranges_are_learned_and_hold_zero(trained):
    for layer in trained["qat"].layers:
        quantizer = getattr(layer, "output_range", None) or getattr(layer, "range", None)
        if quantizer is None:
            continue
        low, high = float(quantizer.minimum.numpy()), float(quantizer.maximum.numpy())
        assert low <= 0.0 < high and float(quantizer.seen.numpy()) == 1.0, layer.name
    image = trained["qat"].get_layer("quantize_image").range
    assert float(image.minimum.numpy()) == 0.0 and float(image.maximum.numpy()) == pytest.approx(
        1.0, abs=0.01
    )


def test_quantize_aware_model_saves_and_loads_without_custom_objects(trained, tmp_path):
    path = os.path.join(tmp_path, "qat.keras")
    trained["qat"].save(path)
    loaded = keras.saving.load_model(path)
    x = trained["x_test"][:16]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trained["qat"].predict(x, verbose=0))


@pytest.fixture(scope="module")
def int8_file(trained):
    return tfsparse.export.to_tflite(
        trained["qat"], quantize="int8", representative_data=trained["x_train"][:100]
    )


def _interpreter(flatbuffer):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return interpreter


def _file_tensor(interpreter, dtype, shape):
    # Tensor names in the file follow TensorFlow's scopes, not layer names; in the digits CNN each
    # weight and activation shape is unique. The last match is the value an op reads (a sparse
    # weight's DENSIFY output after its stored form).
    tensors = [
        detail
        for detail in interpreter.get_tensor_details()
        if detail["dtype"] == dtype and tuple(detail["shape"]) == shape
    ]
    return tensors[-1]


def test_int8_file_takes_the_learned_ranges_and_the_trained_int8_weights(trained, int8_file):
    qat = trained["qat"]
    interpreter = _interpreter(int8_file)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], trained["x_test"][:1])
    interpreter.invoke()  # fills the DENSIFY outputs of sparse weights
    for layer in qat.layers:
        if not isinstance(layer, QuantizeWrapper):
            continue
        kernel = np.asarray(layer.quantized_kernel())
        stored = kernel.T if isinstance(layer.layer, keras.layers.Dense) else np.moveaxis(kernel, -1, 0)
        weight = _file_tensor(interpreter, np.int8, stored.shape)
        scales = weight["quantization_parameters"]["scales"]
        values = interpreter.get_tensor(weight["index"]).astype("float32")
        in_steps = stored / scales.reshape(-1, *[1] * (stored.ndim - 1))
        np.testing.assert_allclose(values, in_steps, atol=1e-3)  # the same int8 values, exactly
        assert np.all(values[stored == 0] == 0)
        low, high = float(layer.output_range.minimum.numpy()), float(layer.output_range.maximum.numpy())
        output = _file_tensor(interpreter, np.int8, (1, *layer.output.shape[1:]))
        assert output["quantization"][0] == pytest.approx((high - low) / 255, rel=1e-4), layer.name


def test_int8_file_computes_what_the_fake_quantized_model_computes(trained, int8_file):
    qat, x = trained["qat"], trained["x_test"]
    interpreter = _interpreter(int8_file)
    first = qat.get_layer("quant_conv2d")
    step = (float(first.output_range.maximum.numpy()) - float(first.output_range.minimum.numpy())) / 255
    probe = keras.Model(qat.inputs, [first.output, qat.outputs[0]])
    keras_first, keras_logits = (np.asarray(a) for a in probe.predict(x, verbose=0))
    tensor = _file_tensor(interpreter, np.int8, (1, *first.output.shape[1:]))
    scale, zero = tensor["quantization"]
    logits = []
    for index, sample in enumerate(x):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample[None])
        interpreter.invoke()
        values = (interpreter.get_tensor(tensor["index"]).astype("float32") - zero) * scale
        # Each quantized layer's output lands within one quantization step of Keras' fake quantization.
        assert np.abs(values[0] - keras_first[index]).max() <= step * 1.001
        logits.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    agreement = np.mean(np.argmax(logits, axis=1) == keras_logits.argmax(axis=1))
    assert agreement >= 0.98


def test_int8_file_keeps_the_zeros(trained, int8_file):
    report = tfsparse.analysis.tflite_sparsity_report(int8_file)
    int8_rows = [row for row in report.rows if row.dtype == "int8"]
    keras_zeros = sorted(int((k == 0).sum()) for k in _kernels(trained["qat"]).values())
    assert sorted(row.size - row.nonzeros for row in int8_rows) == keras_zeros


def test_to_tflite_refuses_a_quantize_aware_model_in_float():
    qat = quantize_aware(make_cnn())
    with pytest.raises(ValueError, match=r'quantization-aware .* quantize="int8"'):
        tfsparse.export.to_tflite(qat, quantize=None)


def test_quantize_aware_refuses_bad_arguments_and_requantizing(cnn):
    with pytest.raises(ValueError, match="preserve_sparsity"):
        quantize_aware(cnn, preserve_sparsity="yes")
    with pytest.raises(ValueError, match="range_decay"):
        quantize_aware(cnn, range_decay=1.0)
    with pytest.raises(ValueError, match="already quantization-aware"):
        quantize_aware(quantize_aware(cnn))


def test_wrapper_and_activation_configs_round_trip():
    wrapper = QuantizeWrapper(keras.layers.Dense(3), preserve_sparsity=False, range_decay=0.9)
    copy = QuantizeWrapper.from_config(wrapper.get_config())
    assert (copy.preserve_sparsity, copy.range_decay, copy.layer.units) == (False, 0.9, 3)
    activation = QuantizeActivation.from_config(QuantizeActivation(range_decay=0.5).get_config())
    assert activation.range_decay == 0.5


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_quantize_aware_and_clustering_keep_zeros_on_other_backends(backend):
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    script = os.path.join(os.path.dirname(__file__), "backend_compression.py")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["backend"] == backend
    assert facts["qat_zeros_kept"] and facts["qat_trained"]
    assert all(low <= 0.0 < high for low, high in facts["qat_ranges"])
    assert all(1 <= count <= 4 for count in facts["cluster_values"])
    assert facts["cluster_sparsity"] == pytest.approx([0.7, 0.7, 0.7], abs=0.02)
    assert facts["strip_max_difference"] == 0.0


def test_prune_cluster_then_quantize_aware_keeps_clusters_and_zeros_in_the_int8_file(trained):
    from tfsparse.clustering import ClusterWeights, UpdateClusterAssignments, cluster_weights

    x = trained["x_train"][:320]
    y = np.asarray(trained["qat"].predict(x, verbose=0)).argmax(axis=1)  # labels: any will do
    clustered = cluster_weights(trained["pruned"], number_of_clusters=8)
    clustered.compile(keras.optimizers.Adam(1e-3), LOSS)
    clustered.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[UpdateClusterAssignments(10)])
    qat = quantize_aware(clustered)
    assert all(
        isinstance(layer.layer, ClusterWeights)
        for layer in qat.layers
        if isinstance(layer, QuantizeWrapper) and layer.quantizes_kernel
    )
    centroids = [
        np.asarray(layer.layer.centroids)
        for layer in qat.layers
        if isinstance(getattr(layer, "layer", None), ClusterWeights)
    ]
    qat.compile(keras.optimizers.Adam(1e-3), LOSS)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    after = [
        np.asarray(layer.layer.centroids)
        for layer in qat.layers
        if isinstance(getattr(layer, "layer", None), ClusterWeights)
    ]
    assert all(np.abs(a - b).max() > 1e-5 for a, b in zip(after, centroids)), "centroids did not train"
    flatbuffer = tfsparse.export.to_tflite(qat, sparse=False, quantize="int8", representative_data=x[:100])
    interpreter = _interpreter(flatbuffer)
    for layer in qat.layers:
        if not isinstance(getattr(layer, "layer", None), ClusterWeights):
            continue
        kernel = np.asarray(layer.layer.layer.kernel)
        stored_shape = kernel.T.shape if kernel.ndim == 2 else np.moveaxis(kernel, -1, 0).shape
        values = interpreter.get_tensor(_file_tensor(interpreter, np.int8, stored_shape)["index"])
        pruned_zeros = np.asarray(layer.layer.kernel_mask) == 0
        pruned_zeros = pruned_zeros.T if kernel.ndim == 2 else np.moveaxis(pruned_zeros, -1, 0)
        assert np.all(values[pruned_zeros] == 0), layer.name
        for channel in values.reshape(values.shape[0], -1):
            assert len(np.unique(channel[channel != 0])) <= 8, layer.name


def test_batch_norm_and_depthwise_model_trains_and_exports_int8_with_its_zeros(digits):
    x, y = digits
    qat = quantize_aware(tfsparse.prune_oneshot(make_cnn(), 0.5, criterion="magnitude"))
    wrapped = {type(layer.layer).__name__ for layer in qat.layers if isinstance(layer, QuantizeWrapper)}
    assert wrapped == {"Conv2D", "BatchNormalization", "DepthwiseConv2D", "Dense"}
    qat.compile(keras.optimizers.Adam(3e-3), LOSS)
    qat.fit(x, y, epochs=2, batch_size=32, verbose=0)
    # Each layer lands within a step of Keras; batch normalization becomes MUL and ADD with a
    # calibrated range between them, one more rounding. to_tflite raises unless the file runs in LiteRT within the int8 tolerance of the Keras model.
    flatbuffer = tfsparse.export.to_tflite(qat, sparse=False, quantize="int8", representative_data=x[:64])
    report = tfsparse.analysis.tflite_sparsity_report(flatbuffer)
    kernels = [row for row in report.rows if row.dtype == "int8" and len(row.shape) > 1]  # not BN's MUL/ADD
    assert sorted(row.size - row.nonzeros for row in kernels) == sorted(
        int((k == 0).sum()) for k in _kernels(qat).values()
    )
