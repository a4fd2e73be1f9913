"""`to_tflite`: a Keras model (pruned or not) to a TFLite file, checked in LiteRT before it is returned.

What the TF 2.21 converter and LiteRT 2.3 do with sparse weights (measured on CNNs and MLPs pruned
to 80-90%, dense, 16x1-block and 1x16-block; tests/test_export.py pins the cases down):

- With `Optimize.EXPERIMENTAL_SPARSITY` most pruned weights are stored in TFLite's sparse format
  and expanded by a DENSIFY node when the interpreter is prepared; XNNPack takes those nodes into
  its partition. float32 and float16 files are then fully delegated.
- The trap: in files with int8 weights, XNNPack claims some nodes whose weight comes from DENSIFY,
  then fails to build them, and the whole interpreter refuses to start under default settings
  ("failed to delegate FULLY_CONNECTED node #8; Node number 12 (TfLiteXNNPackDelegate) failed to
  prepare"). In "int8" files it hits FULLY_CONNECTED (sparse int8 CONV_2D and DEPTHWISE_CONV_2D
  weights run); in "dynamic" files also some CONV_2D nodes, depending on their shape. The dense
  file runs. Disabling XNNPack is not "default settings"; converting dense whenever int8 is asked
  loses the sparse convolutions that do run; a table of failing ops would go stale with the next
  LiteRT. So `to_tflite` asks XNNPack: it prepares the file, stores dense exactly the weights of
  the nodes XNNPack names in its error (`_flatbuffer.store_densely`: the DENSIFY node's output
  becomes a plain constant), and prepares again until it runs; a warning lists those weights and
  what they cost in bytes.
- Some int8 FULLY_CONNECTED weights (block-sparse ones) are read sparse by the op itself (op
  version 8, LiteRT's builtin sparse kernels; XNNPack does not take those nodes). They compute
  correctly in float32 and int8 files, so they stay; in "dynamic" and "float16" files LiteRT
  computes NaN from them, so the next candidate expands them through DENSIFY nodes instead
  (`_flatbuffer.through_densify`). For a 4-input Dense layer the converter even gives the weight
  1x16 blocks that cannot hold its rows, losing values: that file is wrong whatever is done to it.
- Weights whose sparse encoding is not smaller than dense (small kernels: indices cost more than
  the zeros save) are stored dense, silently.

Every candidate is verified (prepared with default delegates, run, compared with Keras). If no
sparse candidate passes, the converter's dense file is returned with a warning saying why; if even
that fails, `to_tflite` raises rather than return a file that does not run. When no weight is
left sparse, the converter's own dense file is returned.

Files take one sample per invocation, with static shapes: a Keras 3 model converted with a free
batch dimension keeps SHAPE, STRIDED_SLICE and PACK nodes around Flatten that XNNPack does not
take, which splits the graph into several partitions with builtin kernels between them.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings

import keras
import numpy as np

from tfsparse._files import remove_stale_temporaries
from tfsparse.export import _flatbuffer, _litert
from tfsparse.export._files import (
    as_input_list,
    check_output_path,
    generated_inputs,
    plain_model,
    signature_name,
    write_file_atomically,
)
from tfsparse.export._flatbuffer import SparseWeight
from tfsparse.export._litert import TFLiteReport, verify_tflite

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")

# Samples run through the file to compare it with Keras; calibration uses all of them.
_VERIFY_SAMPLES = 32


@contextlib.contextmanager
def _quiet():
    # Keras' export prints the endpoint's signature; the converter warns that int8 inputs have no
    # statistics (expected: inputs and outputs stay float), its calibrator that it uses the old
    # tf.lite.Interpreter, and TensorFlow emits numpy 2 notes.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        yield


def _configure(
    converter, sparse: bool, quantize: str | None, calibration: list[np.ndarray], names: list[str]
) -> None:
    import tensorflow as tf

    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    converter.optimizations = optimizations
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":

        def samples():
            # By signature input name: the file's inputs need not be in the model's order.
            for sample in range(len(calibration[0])):
                yield {name: array[sample : sample + 1] for name, array in zip(names, calibration)}

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def _convert(model: keras.Model, sparse: bool, quantize: str | None, calibration: list[np.ndarray]) -> bytes:
    """The converter's file for `model`, traced for batch size 1 (see the module docstring).

    This is what `TFLiteConverter.from_keras_model` does, less the free batch dimension and less
    the nesting a batch-1 wrapper model would add to every tensor name.
    """
    import tensorflow as tf

    specs = [
        tf.TensorSpec((1, *tensor.shape[1:]), tensor.dtype, name=signature_name(tensor.name))
        for tensor in model.inputs
    ]
    # Named with the process id, so that the folders of a killed run are removed by the next one.
    remove_stale_temporaries(tempfile.gettempdir(), "tfsparse-export-")
    with tempfile.TemporaryDirectory(prefix=f"tfsparse-export-{os.getpid()}.") as folder, _quiet():
        try:
            signature = [specs if len(specs) > 1 else specs[0]]
            model.export(folder, format="tf_saved_model", verbose=False, input_signature=signature)
            converter = tf.lite.TFLiteConverter.from_saved_model(folder)
            _configure(converter, sparse, quantize, calibration, [spec.name for spec in specs])
            return converter.convert()
        except Exception as error:  # tracing and conversion raise many unrelated types
            raise RuntimeError(
                f"Converting model '{model.name}' to TFLite failed (sparse={sparse}, quantize={quantize!r}): "
                f"{str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__}"
            ) from error


def _without_failing_sparse_weights(flatbuffer: bytes) -> tuple[bytes, list[SparseWeight]]:
    """The file with the sparse weights XNNPack fails to prepare stored dense, and those weights.

    XNNPack names the nodes it failed on; only their weights are expanded, then it is asked again.
    """
    given_up: list[SparseWeight] = []
    error = _litert.delegate_error(flatbuffer)
    while error is not None:
        weights = _flatbuffer.sparse_weights(flatbuffer)
        if not weights:
            break  # it fails for some other reason; verification will say so
        named = set(_litert.failed_nodes(error))
        # Without a named node to blame, expand every sparse weight.
        chosen = [weight for weight in weights if weight.consumer in named] or weights
        given_up += chosen
        flatbuffer = _flatbuffer.store_densely(flatbuffer, chosen)
        error = _litert.delegate_error(flatbuffer)
    return flatbuffer, given_up


def _sparse_candidates(converted: bytes):
    """Sparse files to try, best first, each with the weights XNNPack made us store dense.

    First the converter's file as it is (weights an op reads sparse itself, block-sparse
    FULLY_CONNECTED at op version 8, run on LiteRT's builtin sparse kernels); then with those
    weights expanded by DENSIFY nodes, which XNNPack can take (and which avoids the NaN outputs
    LiteRT 2.3 computes from them in "dynamic" and "float16" files).
    """
    weights = _flatbuffer.sparse_weights(converted)
    # Weights whose sparse encoding is not smaller than dense only cost bytes.
    base = _flatbuffer.store_densely(converted, [w for w in weights if w.dense_bytes <= w.sparse_bytes])
    yield _without_failing_sparse_weights(base)
    read_sparse = [weight for weight in _flatbuffer.sparse_weights(base) if weight.densify is None]
    if read_sparse:
        yield _without_failing_sparse_weights(_flatbuffer.through_densify(base, read_sparse))


_NAN_OUTPUTS = (
    "the outputs on the sample inputs hold NaN, although weights and inputs are finite (an overflow "
    "in the model or in the file, e.g. float16 or int8 ranges); try another `quantize`, or inputs "
    "on the training data's scale"
)


def _problem(report: TFLiteReport) -> str:
    if not report.runs_with_default_delegates:
        return f"fails in LiteRT's default delegates ({report.delegate_error})"
    if np.isnan(report.max_abs_difference):
        return _NAN_OUTPUTS
    return (
        f"differs from the Keras model by up to {report.max_abs_difference:.3g} "
        f"(tolerance {report.tolerance:.3g})"
    )


def _best_sparse(model, converted: bytes, quantize, samples, verified) -> tuple[bytes, TFLiteReport]:
    """The first sparse candidate that runs under the default delegates within the tolerance, or
    else the dense file; warns with what was given up."""
    weights = _flatbuffer.sparse_weights(converted)
    if not weights:
        return verified(converted)  # nothing pruned enough for the converter to encode sparse
    broken = [weight for weight in weights if not weight.fits]
    problem = (
        "cannot hold " + "; ".join(weight.describe() for weight in broken) + " (the converter gave "
        "it blocks wider than its rows, dropping values), so it computes wrong outputs"
    )
    for candidate, given_up in [] if broken else _sparse_candidates(converted):
        candidate, report = verified(candidate)
        if not _usable(report):
            problem = _problem(report)
            continue
        left = len(_flatbuffer.sparse_weights(candidate))
        if not left:
            # No weight is left sparse: the converter's own dense file is the cleaner, smaller one.
            dense, dense_report = verified(_convert(model, False, quantize, samples))
            if _usable(dense_report):
                candidate, report = dense, dense_report
        if given_up:
            kept = (
                f"{left} other weights stay sparse"
                if left
                else "no weight stays sparse, so this is the dense encoding"
            )
            warnings.warn(
                f"to_tflite: XNNPack (LiteRT's default delegate) fails to prepare these weights of "
                f"model '{model.name}' sparse, so they are stored dense: "
                + "; ".join(weight.describe() for weight in given_up)
                + f". {kept}: {len(candidate):,} bytes (the converter's file with every weight "
                f"sparse: {len(converted):,}).",
                stacklevel=3,
            )
        return candidate, report

    dense, dense_report = verified(_convert(model, False, quantize, samples))
    if _usable(dense_report):
        warnings.warn(
            f"to_tflite: the sparse encoding of model '{model.name}' {problem}; returning the dense "
            f"encoding ({len(dense):,} bytes instead of {len(converted):,}).",
            stacklevel=3,
        )
    return dense, dense_report  # `_check_report` raises if even this one does not run


def _check_arguments(sparse, quantize, representative_data) -> None:
    if not (quantize is None or isinstance(quantize, str) and quantize in QUANTIZE_MODES):
        raise ValueError(
            f"Argument `quantize` must be one of {QUANTIZE_MODES}. Received: quantize={quantize!r}"
        )
    if not isinstance(sparse, (bool, np.bool_)):
        raise ValueError(f"Argument `sparse` must be True or False. Received: sparse={sparse!r}")
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            'Argument `representative_data` is required with quantize="int8": full integer '
            "quantization calibrates each activation's range on it. Pass a few hundred typical "
            "inputs, e.g. `representative_data=x_train[:200]`."
        )


def to_tflite(
    model: keras.Model,
    path=None,
    sparse: bool = True,
    quantize: str | None = None,
    representative_data=None,
    *,
    overwrite: bool = False,
) -> bytes:
    """Converts a Keras model to TFLite, runs the file in LiteRT and checks it against the model.

    A pruned model (with `PruneLowMagnitude` layers) is stripped first. The file is run in the
    LiteRT interpreter with its default delegates (XNNPack) on sample inputs: `representative_data`
    (its first 32 samples) or, without it, 16 standard-normal inputs of the model's input shape.
    Its outputs must match the Keras model's within a tolerance, relative to the largest absolute
    Keras output `peak` on those inputs: `1e-4 * peak` for float32 (quantize=None),
    `1e-2 * peak` for "float16", `0.05 * peak` for "dynamic" and `0.15 * peak` for "int8".
    A file that fails to prepare with the default delegates or misses the tolerance is not returned.

    A quantization-aware model (from `tfsparse.quantization.quantize_aware`) exports with
    quantize="int8" only: the file takes the activation ranges it learned and the int8 weights it
    trained with, and is compared with its fake-quantized outputs.

    With `sparse=True`, pruned weights are stored in TFLite's sparse encoding where that makes
    the file smaller and runs: weights that XNNPack cannot prepare sparse (int8 FULLY_CONNECTED
    weights with LiteRT 2.3) are stored dense with a warning naming them, and when the converter's
    sparse file cannot be made to run correctly the dense one is returned, with a warning saying
    why (see the module docstring). Inputs and outputs stay float32 in every mode; the file takes
    one sample per invocation.

    Args:
        model: a Keras model, pruned or not, built from `keras.Input`s (or called once).
        path: where to write the file (atomically: a temporary file beside it, then a rename);
            None to only return the bytes.
        sparse: store pruned weights in TFLite's sparse encoding
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`).
        quantize: None (float32), "dynamic" (int8 weights, float activations), "float16" (float16
            weights) or "int8" (full integer, calibrated on `representative_data`).
        representative_data: sample inputs, a numpy array (or one per model input) of the model's
            input shape; required for "int8".
        overwrite: replace an existing file at `path`.

    Returns:
        The TFLite flatbuffer as bytes.

    Raises:
        ValueError: bad arguments (an `OutputExistsError`, also a `FileExistsError`, for an
            existing `path`).
        RuntimeError: the converter failed, or no encoding of the model runs in LiteRT's default
            delegates within the tolerance.

    Example:

    ```python
    flatbuffer = tfsparse.export.to_tflite(
        pruned, "model.tflite", sparse=True, quantize="int8", representative_data=x_train[:200])
    ```
    """
    _check_arguments(sparse, quantize, representative_data)
    model = plain_model(model)
    converted_model = _quantize_aware_for_converter(model, quantize)
    if path is not None:
        path = check_output_path(path, overwrite)
    if representative_data is not None:
        samples = as_input_list(model, representative_data, "representative_data")
    else:
        samples = generated_inputs(model)
    verify_inputs = [array[:_VERIFY_SAMPLES] for array in samples]

    def verified(candidate: bytes) -> tuple[bytes, TFLiteReport]:
        return candidate, verify_tflite(candidate, model, verify_inputs, runs=1)

    flatbuffer = _convert(converted_model, bool(sparse), quantize, samples)
    if sparse:
        flatbuffer, report = _best_sparse(converted_model, flatbuffer, quantize, samples, verified)
    else:
        report = verified(flatbuffer)[1]
    _check_report(report, model.name)
    if path is not None:
        write_file_atomically(path, flatbuffer, overwrite)
    return flatbuffer


def _quantize_aware_for_converter(model: keras.Model, quantize: str | None) -> keras.Model:
    """What to convert: `model` itself, or for a `quantize_aware` model its converter copy, whose
    fake quantization gives the file its learned ranges and int8 weights."""
    from tfsparse import quantization
    from tfsparse.quantization.quantize import for_converter

    if not quantization.is_quantize_aware(model):
        return model
    if quantize != "int8":
        raise ValueError(
            f"Model '{model.name}' is quantization-aware (from `tfsparse.quantization.quantize_aware`), "
            f'so it exports as full integer only. Received: quantize={quantize!r}. Pass quantize="int8" '
            "and `representative_data`."
        )
    return for_converter(model)


def _usable(report: TFLiteReport) -> bool:
    return report.runs_with_default_delegates and report.within_tolerance


def _check_report(report: TFLiteReport, name: str) -> None:
    if not report.runs_with_default_delegates:
        raise RuntimeError(
            f"The TFLite file of model '{name}' fails in LiteRT's default delegates: {report.delegate_error}"
        )
    if np.isnan(report.max_abs_difference):
        raise RuntimeError(f"The TFLite file of model '{name}' cannot be checked: {_NAN_OUTPUTS}.")
    if not report.within_tolerance:
        raise RuntimeError(
            f"The TFLite file of model '{name}' differs from the Keras model by up to "
            f"{report.max_abs_difference:.3g}, more than the tolerance {report.tolerance:.3g} for "
            f"quantize={report.quantization!r}. {report}"
        )
