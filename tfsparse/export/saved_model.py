"""`to_saved_model`: a Keras model (pruned or not) to a TensorFlow SavedModel for TF Serving or GPUs.

The SavedModel holds the stripped model's dense weights (zeros included): TensorFlow's kernels
have no sparse encoding to gain from, and a stock SavedModel serves anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile

import keras
import numpy as np

from tfsparse._files import remove_stale_temporaries
from tfsparse.export._files import (
    as_input_list,
    check_output_path,
    generated_inputs,
    keras_outputs,
    plain_model,
    replace_with_folder,
)

# Same graph and float32 kernels on both sides: only operation order (oneDNN, XLA) can differ.
SAVED_MODEL_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class SavedModelReport:
    """What `to_saved_model` wrote and measured.

    Attributes:
        path: the SavedModel folder.
        max_abs_difference: largest absolute difference between the reloaded SavedModel's outputs
            and the Keras model's over the sample inputs.
        tolerance: the largest difference accepted (`SAVED_MODEL_TOLERANCE` times the largest
            absolute Keras output).
        size_bytes: total size of the files in the folder.
    """

    path: str
    max_abs_difference: float
    tolerance: float
    size_bytes: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"SavedModel at {self.path}: {self.size_bytes:,} bytes; reloaded outputs differ by up to "
            f"{self.max_abs_difference:.3g} (tolerance {self.tolerance:.3g})"
        )


def _folder_size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names
    )


def _serve(loaded, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tensorflow as tf

    tensors = [tf.constant(array) for array in inputs]
    outputs = loaded.serve(tensors if len(tensors) > 1 else tensors[0])
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(output, dtype=np.float64) for output in outputs]


def to_saved_model(model: keras.Model, path, inputs=None, *, overwrite: bool = False) -> SavedModelReport:
    """Exports a Keras model as a TensorFlow SavedModel, reloads it and compares its outputs.

    A pruned model is stripped first. The model is exported with Keras 3's
    `model.export(..., format="tf_saved_model")` (one `serve` endpoint) into a temporary folder
    beside `path`, reloaded with `tf.saved_model.load`, run on the sample inputs and compared with
    the Keras model; only then is the folder renamed to `path`.

    Args:
        model: a Keras model, pruned or not.
        path: the folder to create.
        inputs: sample inputs for the comparison (a numpy array, or one per model input); by
            default 16 standard-normal inputs of the model's input shape.
        overwrite: replace an existing `path`.

    Returns:
        A `SavedModelReport`: the path, the largest output difference and its tolerance
        (`1e-5` times the largest absolute Keras output), the folder's size.

    Raises:
        ValueError: bad arguments (an `OutputExistsError` for an existing `path`).
        RuntimeError: the reloaded SavedModel's outputs differ from the Keras model's.

    Example:

    ```python
    report = tfsparse.export.to_saved_model(pruned, "serving/model/1")
    print(report)
    ```
    """
    import tensorflow as tf

    model = plain_model(model)
    path = check_output_path(path, overwrite)
    samples = generated_inputs(model) if inputs is None else as_input_list(model, inputs, "inputs")

    parent = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(parent, ".saved_model.")
    staging = tempfile.mkdtemp(dir=parent, prefix=f".saved_model.{os.getpid()}.")
    try:
        exported = os.path.join(staging, "model")
        # Keras prints the endpoint's signature on export; the report says what matters.
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(exported, format="tf_saved_model")
        loaded = tf.saved_model.load(exported)
        expected = keras_outputs(model, samples)
        actual = _serve(loaded, samples)
        difference = max(float(np.max(np.abs(a - e))) for a, e in zip(actual, expected))
        tolerance = SAVED_MODEL_TOLERANCE * max(max(float(np.max(np.abs(e))) for e in expected), 1e-6)
        if len(actual) != len(expected) or difference > tolerance:
            raise RuntimeError(
                f"The reloaded SavedModel of model '{model.name}' differs from the Keras model by up to "
                f"{difference:.3g}, more than the tolerance {tolerance:.3g}."
            )
        replace_with_folder(path, exported, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SavedModelReport(path, difference, tolerance, _folder_size(path))
