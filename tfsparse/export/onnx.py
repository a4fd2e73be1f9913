"""`to_onnx`: a Keras model (pruned or not) to an ONNX file, checked in onnxruntime before it is returned.

The conversion is Keras' own (`model.export(format="onnx")`: tf2onnx on the TensorFlow and JAX
backends, torch.onnx on PyTorch). Weights are stored as they are, so pruned zeros, 2:4 patterns
included, stay where they were: a Dense kernel as a MatMul initializer (inputs x outputs), a
convolution kernel as (outputs, inputs, height, width), the input-channel axis on which 2:4
sparsity lies being axis 0 and 1 respectively.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings

import keras
import numpy as np

from tfsparse.export._files import (
    as_input_list,
    check_output_path,
    generated_inputs,
    keras_outputs,
    plain_model,
    write_file_atomically,
)

# Largest difference to the Keras model accepted, as a fraction of the largest absolute Keras
# output: float32 in both, so only the order of summation differs.
TOLERANCE = 1e-4

_VERIFY_SAMPLES = 32


def _export(model: keras.Model, opset: int | None) -> bytes:
    specs = [
        keras.InputSpec(shape=tensor.shape, dtype=tensor.dtype, name=tensor.name) for tensor in model.inputs
    ]
    signature = [specs] if len(specs) > 1 else specs
    with tempfile.TemporaryDirectory(prefix="tfsparse-onnx-") as folder:
        path = os.path.join(folder, "model.onnx")
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            try:
                model.export(
                    path, format="onnx", verbose=False, input_signature=signature, opset_version=opset
                )
            except ImportError as error:
                raise RuntimeError(
                    f"ONNX export needs packages that are not installed ({error}). Install them: "
                    "`pip install tf2onnx onnx onnxruntime` (tfsparse's `test` extras have them)."
                ) from error
        with open(path, "rb") as file:
            return file.read()


def onnx_outputs(content: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Runs an ONNX file in onnxruntime (CPU) on `inputs`, one array per file input in order.

    Args:
        content: the ONNX file's bytes.
        inputs: one array per input.

    Returns:
        The outputs as float64 arrays.

    Example:

    ```python
    (logits,) = onnx_outputs(open("model.onnx", "rb").read(), [x_test[:8]])
    ```
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    feed = {spec.name: array for spec, array in zip(session.get_inputs(), inputs)}
    return [np.asarray(output, dtype=np.float64) for output in session.run(None, feed)]


def to_onnx(
    model: keras.Model,
    path=None,
    sample_data=None,
    *,
    opset: int | None = None,
    overwrite: bool = False,
) -> bytes:
    """Converts a Keras model to ONNX, runs the file in onnxruntime and checks it against the model.

    A pruned model is stripped first. The file keeps a free batch dimension; it is run on
    `sample_data` (its first 32 samples) or on 16 standard-normal inputs, and its outputs must
    match Keras' within `1e-4 * peak`, `peak` being the largest absolute Keras output.

    Args:
        model: a Sequential or functional Keras model, pruned or not.
        path: where to write the file (atomically); None to only return the bytes.
        sample_data: inputs to compare on: an array, or a list with one array per model input.
        opset: the ONNX opset; None for the converter's default.
        overwrite: replace an existing file at `path`.

    Returns:
        The ONNX file as bytes.

    Raises:
        ValueError: bad arguments (an existing `path` without `overwrite`).
        RuntimeError: the conversion failed, or the file's outputs differ from the model's.

    Example:

    ```python
    tfsparse.export.to_onnx(pruned, "model.onnx", sample_data=x_test[:32])
    ```
    """
    model = plain_model(model)
    if path is not None:
        path = check_output_path(path, overwrite)
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 1):
        raise ValueError(f"Argument `opset` must be a positive integer or None. Received: opset={opset!r}")
    if sample_data is not None:
        inputs = [array[:_VERIFY_SAMPLES] for array in as_input_list(model, sample_data, "sample_data")]
    else:
        inputs = generated_inputs(model)
    try:
        content = _export(model, opset)
    except RuntimeError:
        raise
    except Exception as error:  # the converters raise many unrelated types
        message = str(error).strip().splitlines()
        raise RuntimeError(
            f"Converting model '{model.name}' to ONNX failed: {message[-1] if message else type(error).__name__}"
        ) from error
    expected = keras_outputs(model, inputs)
    actual = onnx_outputs(content, inputs)
    difference = max(float(np.max(np.abs(a.reshape(e.shape) - e))) for a, e in zip(actual, expected))
    tolerance = TOLERANCE * max(max(float(np.max(np.abs(e))) for e in expected), 1e-6)
    if len(actual) != len(expected) or difference > tolerance:
        raise RuntimeError(
            f"The ONNX file of model '{model.name}' differs from the Keras model by up to {difference:.3g} "
            f"in onnxruntime (tolerance {tolerance:.3g})."
        )
    if path is not None:
        write_file_atomically(path, content, overwrite)
    return content
