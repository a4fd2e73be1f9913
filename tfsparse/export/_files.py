"""What every exporter shares: checking arguments and output paths, sample inputs, atomic writes."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import keras
import numpy as np

from tfsparse._files import OutputExistsError, check_output_argument, write_atomically  # noqa: F401 (re-exported: tfsparse.export.OutputExistsError)
from tfsparse.mask_updates import collect_wrappers
from tfsparse.prune import strip_pruning


def check_model(model, argument: str = "model") -> None:
    """Refuses anything but a Keras model with known inputs, naming `argument`."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `{argument}` must be a Keras model (pruned or not). "
            f"Received: {argument}={model!r} of type {type(model).__name__}"
        )
    if not getattr(model, "inputs", None):
        # Subclassed models have no `inputs`, so the shapes to export for are unknown.
        raise ValueError(
            f"Argument `{argument}` must be a Sequential or functional model with known inputs; "
            f"'{model.name}' ({type(model).__name__}) has none. Wrap it: "
            "`inputs = keras.Input(shape); model = keras.Model(inputs, model(inputs))`."
        )


def plain_model(model) -> keras.Model:
    """`model` as stock Keras layers: a pruned model is stripped, anything else is checked and kept."""
    check_model(model)
    plain = strip_pruning(model) if collect_wrappers(model) else model
    check_finite_weights(plain)
    return plain


def check_finite_weights(model: keras.Model) -> None:
    """Refuses a model with NaN or infinite weights, naming the first such weight.

    Its outputs would be NaN, and the check of the exported file against them meaningless.
    """
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable.value)
        if not np.issubdtype(value.dtype, np.inexact):
            continue
        bad = value.size - int(np.count_nonzero(np.isfinite(value)))
        if bad:
            nans = int(np.count_nonzero(np.isnan(value)))
            raise ValueError(
                f"Model '{model.name}' weight '{variable.path}' has {nans} NaN and {bad - nans} infinite "
                "values, so its outputs cannot be computed or checked: the model diverged in training. "
                "Export an earlier checkpoint, or retrain with a lower learning rate."
            )


_NOT_IN_SIGNATURE_NAMES = re.compile(r"[^A-Za-z0-9_.\-/]")


def signature_name(name: str) -> str:
    """`name` with the characters TensorFlow refuses in a signature's input names replaced by '_'."""
    return _NOT_IN_SIGNATURE_NAMES.sub("_", name)


def input_specs(model: keras.Model) -> list[tuple[tuple[int | None, ...], str]]:
    """(shape without the batch dimension, dtype) of each model input, in the model's order."""
    return [(tuple(tensor.shape[1:]), str(tensor.dtype)) for tensor in model.inputs]


def as_input_list(model: keras.Model, data, argument: str) -> list[np.ndarray]:
    """`data` (one array, or a list with one array per model input) checked against the model's inputs."""
    specs = input_specs(model)
    arrays = list(data) if isinstance(data, (list, tuple)) else [data]
    if len(arrays) != len(specs):
        raise ValueError(
            f"Argument `{argument}` must hold one array per model input ({len(specs)}). "
            f"Received: {len(arrays)} arrays"
        )
    checked = []
    for array, (shape, dtype) in zip(arrays, specs):
        try:
            array = np.asarray(array, dtype=dtype)
        except (TypeError, ValueError):
            raise ValueError(
                f"Argument `{argument}` must be numeric arrays. Received: an array of {type(array).__name__}"
            ) from None
        compatible = array.ndim == len(shape) + 1 and all(
            want is None or want == got for want, got in zip(shape, array.shape[1:])
        )
        if not compatible or len(array) == 0:
            expected = "(samples, " + ", ".join("None" if d is None else str(d) for d in shape) + ")"
            raise ValueError(
                f"Argument `{argument}` must have the model's input shape {expected} with at least one "
                f"sample. Received: shape {array.shape}"
            )
        if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
            nans = int(np.count_nonzero(np.isnan(array)))
            infinite = array.size - int(np.count_nonzero(np.isfinite(array))) - nans
            first = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])
            raise ValueError(
                f"Argument `{argument}` holds {nans} NaN and {infinite} infinite values (first in sample "
                f"{first}); outputs computed from them cannot be checked. Remove or impute those samples."
            )
        checked.append(array)
    if len({len(array) for array in checked}) > 1:
        raise ValueError(f"Argument `{argument}` must have the same number of samples for every input.")
    return checked


def generated_inputs(model: keras.Model, samples: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Standard-normal inputs (integers in {0, 1} for integer inputs) of the model's input shapes."""
    specs = input_specs(model)
    for shape, _ in specs:
        if any(d is None for d in shape):
            raise ValueError(
                f"Model '{model.name}' has an input of unknown shape {shape}; pass sample inputs "
                "(`representative_data` or `inputs`) to fix its dimensions."
            )
    return random_inputs(specs, samples, seed)


def random_inputs(specs, samples: int, seed: int = 0) -> list[np.ndarray]:
    """`samples` standard-normal inputs (integers in {0, 1} for integer dtypes) per `(shape, dtype)`."""
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in specs:
        size = (samples, *shape)
        if np.issubdtype(np.dtype(dtype), np.integer):
            arrays.append(rng.integers(0, 2, size=size).astype(dtype))
        else:
            arrays.append(rng.standard_normal(size).astype(dtype))
    return arrays


def keras_outputs(model: keras.Model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs (inference mode) as a list of float arrays."""
    outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(keras.ops.convert_to_numpy(output), dtype=np.float64) for output in outputs]


def check_output_path(path, overwrite: bool) -> str:
    """`path` as a string, refusing an existing path (unless `overwrite`) or a missing parent folder."""
    # Exports write files or (SavedModel) folders, so a folder at `path` is not refused here.
    return check_output_argument(path, overwrite, must_be_file=False)


def write_file_atomically(path: str, content: bytes, overwrite: bool) -> None:
    """Writes `content` to a temporary file beside `path`, then renames it: readers never see half a file."""
    check_output_path(path, overwrite)

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())

    write_atomically(path, write)


def replace_with_folder(path: str, folder: str, overwrite: bool) -> None:
    """Moves the finished `folder` to `path`; an existing `path` is moved aside first, then deleted.

    A folder cannot be swapped in one `os.replace`, so an existing output is renamed out of the way
    and restored if the move fails.
    """
    check_output_path(path, overwrite)
    aside = None
    if os.path.lexists(path):
        aside = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".replaced.")
        aside = os.path.join(aside, "old")
        os.replace(path, aside)
    try:
        os.replace(folder, path)
    except BaseException:
        if aside is not None:
            os.replace(aside, path)
        raise
    if aside is not None:
        shutil.rmtree(os.path.dirname(aside), ignore_errors=True)
