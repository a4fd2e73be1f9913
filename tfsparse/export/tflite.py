"""`to_tflite`: a Keras model (pruned or not) to a TFLite file, checked in LiteRT before it is returned.

Sparse weights and XNNPack (LiteRT 2.3), as measured on CNNs and MLPs pruned to 80%. With
`Optimize.EXPERIMENTAL_SPARSITY` the converter stores each pruned weight compressed and adds a
DENSIFY node that expands it when the interpreter is prepared; XNNPack takes those nodes into its
own partition. float32 and float16 files with sparse weights are fully delegated. Files with int8
weights are where it breaks: XNNPack claims an int8 node whose weight comes from DENSIFY, then fails
to build it, and then the whole interpreter refuses to start under default settings ("failed to
delegate FULLY_CONNECTED node #8 ... Node number 12 (TfLiteXNNPackDelegate) failed to prepare").
In full-integer ("int8") files this hits FULLY_CONNECTED nodes, while sparse int8 CONV_2D and
DEPTHWISE_CONV_2D weights run; in "dynamic" files it also hits some CONV_2D nodes and not others
(it depends on the shape). The dense file of the same model runs. Options weighed: disabling
the delegate is not "default settings"; converting dense whenever int8 is asked loses the sparse
convolutions that do run; predicting the failing ops from a table would go stale with the next
LiteRT. So `to_tflite` asks XNNPack itself: it prepares the file, reads the nodes XNNPack names
in its error, stores exactly their weights dense again (`_flatbuffer.store_densely`: the DENSIFY
node's output becomes a plain constant) and prepares again, until it runs. It warns with the
weights it kept dense and the bytes that cost. Weights whose sparse encoding is not smaller than
dense (small kernels: the indices cost more than the zeros saved) are stored dense first, silently.
When no weight is left sparse the converter's own dense file is returned; if even that fails in
the default delegates, `to_tflite` raises rather than return a file that does not run.

Files take one sample per invocation, with static shapes: a Keras 3 model converted with a free
batch dimension keeps SHAPE, STRIDED_SLICE and PACK nodes around Flatten that XNNPack does not
take, which splits the graph into several partitions with builtin kernels between them.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings

import keras
import numpy as np

from tfsparse.export import _flatbuffer, _litert
from tfsparse.export._files import (
    as_input_list,
    check_output_path,
    generated_inputs,
    plain_model,
    write_file_atomically,
)
from tfsparse.export._litert import TFLiteReport, verify_tflite

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")

# Samples run through the file to compare it with Keras; calibration uses all of them.
_VERIFY_SAMPLES = 32
# Characters TensorFlow accepts in a signature's input names.
_SIGNATURE_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")


@contextlib.contextmanager
def _quiet():
    # Keras' export prints the endpoint's signature; the converter warns that int8 inputs have no
    # statistics (expected: inputs and outputs stay float) and TensorFlow emits numpy 2 notes.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _configure(converter, sparse: bool, quantize: str | None, calibration: list[np.ndarray]) -> None:
    import tensorflow as tf

    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    converter.optimizations = optimizations
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":

        def samples():
            for sample in range(len(calibration[0])):
                yield [array[sample : sample + 1] for array in calibration]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def _convert(model: keras.Model, sparse: bool, quantize: str | None, calibration: list[np.ndarray]) -> bytes:
    """The converter's file for `model`, traced for batch size 1 (see the module docstring).

    This is what `TFLiteConverter.from_keras_model` does, less the free batch dimension and less
    the nesting a batch-1 wrapper model would add to every tensor name.
    """
    import tensorflow as tf

    specs = [
        tf.TensorSpec((1, *tensor.shape[1:]), tensor.dtype, name=_SIGNATURE_NAME.sub("_", tensor.name))
        for tensor in model.inputs
    ]
    with tempfile.TemporaryDirectory(prefix="tfsparse-export-") as folder, _quiet():
        try:
            signature = [specs if len(specs) > 1 else specs[0]]
            model.export(folder, format="tf_saved_model", verbose=False, input_signature=signature)
            converter = tf.lite.TFLiteConverter.from_saved_model(folder)
            _configure(converter, sparse, quantize, calibration)
            return converter.convert()
        except Exception as error:  # tracing and conversion raise many unrelated types
            raise RuntimeError(
                f"Converting model '{model.name}' to TFLite failed (sparse={sparse}, quantize={quantize!r}): "
                f"{str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__}"
            ) from error


def _describe_weights(flatbuffer: bytes, densify: dict[int, int], chosen: list[int]) -> list[str]:
    """Readable names of the sparse weights read by the chosen DENSIFY nodes, with their consumers."""
    interpreter = _litert.open_interpreter(flatbuffer, default_delegates=False)
    nodes = _litert.node_details(interpreter)
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    described = []
    for index in chosen:
        consumer = nodes[densify[index]]["op_name"] if densify[index] >= 0 else "an op"
        tensor = tensors.get(nodes[index]["inputs"][0])
        if tensor is None:
            described.append(f"a weight of {consumer}")
            continue
        shape = "x".join(str(d) for d in tensor["shape"])
        name = tensor["name"].split(";")[0]  # the converter joins the names of fused ops with ';'
        described.append(f"{consumer} weight '{name}' ({shape} {np.dtype(tensor['dtype']).name})")
    return described


def _delegable(flatbuffer: bytes) -> tuple[bytes, list[str]] | None:
    """The file with weights stored dense where XNNPack fails on them sparse, and those weights.

    None when the file fails in the default delegates even with every weight dense.
    """
    kept_dense: list[str] = []
    error = _litert.delegate_error(flatbuffer)
    while error is not None:
        nodes = _litert.node_details(_litert.open_interpreter(flatbuffer, default_delegates=False))
        densify = _flatbuffer.densify_nodes(nodes)
        if not densify:
            return None
        failed = set(_litert.failed_nodes(error))
        chosen = [index for index, consumer in densify.items() if consumer in failed]
        # Without a named node to blame, expand every sparse weight (the dense-encoding file).
        chosen = chosen or list(densify)
        kept_dense += _describe_weights(flatbuffer, densify, chosen)
        flatbuffer = _flatbuffer.store_densely(flatbuffer, chosen)
        error = _litert.delegate_error(flatbuffer)
    return flatbuffer, kept_dense


def _sparse_where_it_runs(
    model: keras.Model, converted: bytes, quantize: str | None, samples: list[np.ndarray]
) -> bytes:
    """The converted sparse file, with weights stored dense where sparse costs bytes or fails in XNNPack.

    When no weight is left sparse, the converter's own dense file is returned (it is the smaller).
    """
    if not _flatbuffer.sparse_weight_count(converted):
        return converted  # nothing pruned enough for the converter to encode sparse
    flatbuffer = _flatbuffer.store_densely(converted, _flatbuffer.densify_not_paying(converted))
    fixed = _delegable(flatbuffer)
    if fixed is None:
        dense = _convert(model, False, quantize, samples)
        warnings.warn(
            f"to_tflite: the sparse encoding of model '{model.name}' fails in LiteRT's default "
            "delegates even with its weights expanded; returning the dense encoding instead "
            f"({len(dense):,} bytes instead of {len(converted):,}).",
            stacklevel=3,
        )
        return dense
    fixed_flatbuffer, kept_dense = fixed
    still_sparse = _flatbuffer.sparse_weight_count(fixed_flatbuffer)
    if kept_dense:
        left = (
            f"{still_sparse} other weights stay sparse"
            if still_sparse
            else "no weight is left sparse, so the file is the dense encoding"
        )
        warnings.warn(
            f"to_tflite: XNNPack (LiteRT's default delegate) cannot prepare these weights of model "
            f"'{model.name}' in the sparse encoding, so they are stored dense: "
            + "; ".join(kept_dense)
            + f". {left} ({len(fixed_flatbuffer):,} bytes instead of {len(flatbuffer):,}).",
            stacklevel=3,
        )
    if still_sparse:
        return fixed_flatbuffer
    dense = _convert(model, False, quantize, samples)
    return dense if len(dense) <= len(fixed_flatbuffer) else fixed_flatbuffer


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

    With `sparse=True`, weights that XNNPack cannot prepare in the sparse encoding (int8
    FULLY_CONNECTED weights with LiteRT 2.3) are stored dense and a warning names them; see the
    module docstring. Inputs and outputs stay float32 in every mode.

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
        ValueError: bad arguments (an `OutputExistsError` for an existing `path`).
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
    if path is not None:
        path = check_output_path(path, overwrite)
    if representative_data is not None:
        samples = as_input_list(model, representative_data, "representative_data")
    else:
        samples = generated_inputs(model)

    flatbuffer = _convert(model, bool(sparse), quantize, samples)
    if sparse:
        flatbuffer = _sparse_where_it_runs(model, flatbuffer, quantize, samples)

    report = verify_tflite(flatbuffer, model, [array[:_VERIFY_SAMPLES] for array in samples], runs=1)
    _check_report(report, model.name)
    if path is not None:
        write_file_atomically(path, flatbuffer, overwrite)
    return flatbuffer


def _check_report(report: TFLiteReport, name: str) -> None:
    if not report.runs_with_default_delegates:
        raise RuntimeError(
            f"The TFLite file of model '{name}' fails in LiteRT's default delegates: {report.delegate_error}"
        )
    if not report.within_tolerance:
        raise RuntimeError(
            f"The TFLite file of model '{name}' differs from the Keras model by up to "
            f"{report.max_abs_difference:.3g}, more than the tolerance {report.tolerance:.3g} for "
            f"quantize={report.quantization!r}. {report}"
        )
