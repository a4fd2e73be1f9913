"""ONNX export: outputs checked in onnxruntime, 2:4 sparsity kept in the initializers."""

import os

import keras
import numpy as np
import pytest
from conftest import make_digits_cnn

import tfsparse
from tfsparse.export.onnx import onnx_outputs

pytest.importorskip("tf2onnx")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _two_four_model():
    model = make_digits_cnn()
    kernels = {}
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = np.asarray(layer.kernel)
            mask = tfsparse.masking.m_by_n_mask(np.abs(kernel), 2, 4)
            layer.kernel.assign(kernel * mask)
            kernels[layer.name] = kernel * mask
    return model, kernels


def _groups_of_four_along(array, axis):
    moved = np.moveaxis(array, axis, -1)
    return moved.reshape(*moved.shape[:-1], -1, 4)


def test_onnx_file_matches_keras_and_keeps_two_four_sparsity(digits, tmp_path):
    model, kernels = _two_four_model()
    x = digits[0][:32]
    path = os.path.join(tmp_path, "model.onnx")
    content = tfsparse.export.to_onnx(model, path, sample_data=x)
    with open(path, "rb") as file:
        assert file.read() == content
    (logits,) = onnx_outputs(content, [digits[0][:200]])
    expected = np.asarray(model.predict(digits[0][:200], verbose=0))
    np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())
    initializers = [onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(content).graph.initializer]
    found = 0
    for name, kernel in kernels.items():
        # Dense kernels stay (inputs, outputs); convolution kernels become (outputs, inputs, h, w).
        layout = kernel if kernel.ndim == 2 else np.transpose(kernel, (3, 2, 0, 1))
        axis = 0 if kernel.ndim == 2 else 1
        (stored,) = [a for a in initializers if a.shape == layout.shape]
        np.testing.assert_array_equal(stored, layout)
        if layout.shape[axis] % 4 == 0:
            nonzeros = np.count_nonzero(_groups_of_four_along(stored, axis), axis=-1)
            assert nonzeros.max() <= 2, name
            found += 1
    assert found == 3  # conv2d has one input channel: no group of four to prune


def test_to_onnx_strips_a_pruned_model_and_refuses_to_overwrite(digits, tmp_path):
    pruned = tfsparse.prune_low_magnitude(
        make_digits_cnn(), pruning_schedule=tfsparse.ConstantSparsity(0.5, 0)
    )
    path = os.path.join(tmp_path, "pruned.onnx")
    tfsparse.export.to_onnx(pruned, path, sample_data=digits[0][:8])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tfsparse.export.to_onnx(pruned, path)
    with pytest.raises(ValueError, match="opset"):
        tfsparse.export.to_onnx(pruned, opset=0)


def test_to_onnx_takes_a_model_with_two_inputs():
    left, right = keras.Input((4,), name="left"), keras.Input((3,), name="right")
    joined = keras.layers.Concatenate()([keras.layers.Dense(5)(left), right])
    model = keras.Model([left, right], keras.layers.Dense(2)(joined))
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(6, 3)).astype("float32")]
    content = tfsparse.export.to_onnx(model, sample_data=inputs)
    (outputs,) = onnx_outputs(content, inputs)
    np.testing.assert_allclose(outputs, model.predict(inputs, verbose=0), atol=1e-5)
