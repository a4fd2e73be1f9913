"""Running a TFLite file in the LiteRT interpreter: outputs, delegation, size and latency (`verify_tflite`).

Which nodes XNNPack took is not in LiteRT's public Python API (the execution plan is not exposed).
It is read here from the node list instead: a delegate appends one DELEGATE node per partition after
the model's own nodes, and that node's inputs and outputs are the partition's boundary tensors, so
walking back from its outputs to its inputs through the model's nodes finds exactly the nodes it
replaced. A node outside every partition runs on LiteRT's builtin kernels.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import statistics
import time

import keras
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfsparse.export._files import as_input_list, check_model, keras_outputs, signature_name

# Largest difference to the Keras model accepted per quantization, as a fraction of the largest
# absolute Keras output on the same inputs. float32 differs by summation order only; float16
# weights are rounded to 11 significant bits; "dynamic" quantizes weights to int8 per channel and
# activations per batch at run time; "int8" also quantizes every activation to 256 levels from
# the calibration ranges, so its error grows with depth and is the loosest.
TOLERANCES = {None: 1e-4, "float16": 1e-2, "dynamic": 0.05, "int8": 0.15}

_DELEGATE_FAILURE = re.compile(r"failed to delegate (\w+) node #(\d+)")
_TRAILING_NUMBER = re.compile(r"_(\d+)$")
_MESSAGE_START = re.compile(r"(?<=[^\s;])(?=failed to delegate |Node number )")


def _read(tflite) -> bytes:
    if isinstance(tflite, (bytes, bytearray, memoryview)):
        return bytes(tflite)
    try:
        path = os.fspath(tflite)
    except TypeError:
        raise ValueError(
            f"Argument `tflite` must be the bytes of a TFLite file or its path. Received: {type(tflite).__name__}"
        ) from None
    if not os.path.isfile(path):
        raise ValueError(f"Argument `tflite`: no file at {path!r}.")
    with open(path, "rb") as file:
        return file.read()


def open_interpreter(flatbuffer: bytes, default_delegates: bool = True, **kwargs) -> Interpreter:
    """A LiteRT interpreter with its tensors allocated, with (the default) or without XNNPack.

    Raises `RuntimeError` with LiteRT's message when the file cannot be prepared.
    """
    resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(model_content=flatbuffer, experimental_op_resolver_type=resolver, **kwargs)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        # LiteRT runs its messages together ("...node #7Node number 11 ..."); keep them apart.
        raise RuntimeError(_MESSAGE_START.sub("; ", str(error).strip())) from None
    return interpreter


def delegate_error(flatbuffer: bytes) -> str | None:
    """LiteRT's message when the default delegates fail to prepare the file, None when it prepares."""
    try:
        open_interpreter(flatbuffer)
    except RuntimeError as error:
        return str(error)
    return None


def failed_nodes(message: str) -> list[int]:
    """Indices of the nodes XNNPack names in "failed to delegate OP node #N" messages."""
    return [int(index) for _, index in _DELEGATE_FAILURE.findall(message)]


def node_details(interpreter: Interpreter) -> list[dict]:
    """Every node of the main subgraph: index, op name, input and output tensor indices.

    LiteRT has no public accessor for nodes; `_get_ops_details` is the one the TFLite tools use.
    """
    return [
        {
            "index": int(node["index"]),
            "op_name": node["op_name"],
            "inputs": [int(t) for t in node["inputs"]],
            "outputs": [int(t) for t in node["outputs"]],
        }
        for node in interpreter._get_ops_details()
    ]


def undelegated_nodes(delegated: Interpreter, model_nodes: int) -> list[dict]:
    """The model's nodes that no delegate partition took (see the module docstring).

    `model_nodes` is the node count of the same file without delegates: the nodes after it are the
    delegate partitions.
    """
    nodes = node_details(delegated)
    own, partitions = nodes[:model_nodes], nodes[model_nodes:]
    producer = {tensor: node["index"] for node in own for tensor in node["outputs"]}
    covered: set[int] = set()
    for partition in partitions:
        boundary = set(partition["inputs"])
        pending = list(partition["outputs"])
        while pending:
            tensor = pending.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in covered:
                continue
            covered.add(producer[tensor])
            pending.extend(own[producer[tensor]]["inputs"])
    return [node for node in own if node["index"] not in covered]


def detect_quantization(interpreter: Interpreter) -> str | None:
    """The `to_tflite` quantize mode a file was converted with, read from its tensor types."""
    tensors = interpreter.get_tensor_details()
    ops = {node["op_name"] for node in node_details(interpreter)}
    input_types = {detail["dtype"] for detail in interpreter.get_input_details()}
    if "QUANTIZE" in ops or input_types & {np.int8, np.uint8}:
        return "int8"
    types = {tensor["dtype"] for tensor in tensors}
    if np.float16 in types:
        return "float16"
    if np.int8 in types:
        return "dynamic"
    return None


class _Runner:
    """Feeds one sample at a time to an interpreter by the signature's input and output names."""

    def __init__(self, interpreter: Interpreter, keras_model: keras.Model):
        self.interpreter = interpreter
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        signatures = interpreter.get_signature_list()
        if len(signatures) == 1:
            runner = interpreter.get_signature_runner(next(iter(signatures)))
            by_name_in = {name: d["index"] for name, d in runner.get_input_details().items()}
            by_name_out = {name: d["index"] for name, d in runner.get_output_details().items()}
            self.input_indices = self._order(by_name_in, [signature_name(t.name) for t in keras_model.inputs])
            self.output_indices = self._order(by_name_out, list(getattr(keras_model, "output_names", [])))
        else:
            self.input_indices = [d["index"] for d in inputs]
            self.output_indices = [d["index"] for d in outputs]
        self.input_details = {d["index"]: d for d in inputs}

    @staticmethod
    def _order(by_name: dict[str, int], keras_names: list[str]) -> list[int]:
        # Keras 3 files name outputs output_0, output_1, ...; tf-keras files use the Keras names;
        # signatures list names sorted, so the numbers or the Keras names give the model's order.
        if keras_names and set(keras_names) == set(by_name):
            return [by_name[name] for name in keras_names]
        numbered = {
            int(m.group(1)): by_name[name] for name in by_name if (m := _TRAILING_NUMBER.search(name))
        }
        if len(numbered) == len(by_name) and sorted(numbered) == list(range(len(by_name))):
            return [numbered[i] for i in range(len(by_name))]
        return list(by_name.values())

    def set_sample(self, inputs: list[np.ndarray], sample: int) -> None:
        for index, array in zip(self.input_indices, inputs):
            detail = self.input_details[index]
            value = array[sample : sample + 1]
            if detail["dtype"] in (np.int8, np.uint8) and array.dtype.kind == "f":
                scale, zero_point = detail["quantization"]
                value = np.round(value / scale + zero_point)
            self.interpreter.set_tensor(index, value.astype(detail["dtype"]).reshape(detail["shape"]))

    def outputs(self) -> list[np.ndarray]:
        arrays = []
        for index in self.output_indices:
            detail = next(d for d in self.interpreter.get_output_details() if d["index"] == index)
            value = self.interpreter.get_tensor(index).astype(np.float64)
            if detail["dtype"] in (np.int8, np.uint8):
                scale, zero_point = detail["quantization"]
                value = (value - zero_point) * scale
            arrays.append(value)
        return arrays

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        per_sample = []
        for sample in range(len(inputs[0])):
            self.set_sample(inputs, sample)
            self.interpreter.invoke()
            per_sample.append(self.outputs())
        return [np.concatenate([outputs[i] for outputs in per_sample]) for i in range(len(per_sample[0]))]

    def median_latency_ms(self, inputs: list[np.ndarray], runs: int) -> float:
        self.set_sample(inputs, 0)
        self.interpreter.invoke()  # the first call packs weights; not part of the steady state
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


@dataclasses.dataclass(frozen=True)
class TFLiteReport:
    """What `verify_tflite` measured on one TFLite file.

    Attributes:
        max_abs_difference: largest absolute difference between the file's and the Keras model's
            outputs over the sample inputs.
        tolerance: the largest difference accepted for the file's quantization
            (`TOLERANCES[quantization]` times the largest absolute Keras output).
        quantization: the quantize mode read from the file: None, "dynamic", "float16" or "int8".
        runs_with_default_delegates: whether LiteRT prepared the file with its default delegates.
        fully_delegated: whether XNNPack took every node of the model.
        undelegated_ops: op names of the nodes that ran on LiteRT's builtin kernels instead.
        delegate_error: LiteRT's message when the default delegates failed; the numbers are then
            measured on the builtin kernels.
        size_bytes: size of the file.
        gzip_bytes: size of the file compressed with gzip (level 9).
        latency_ms: median time of one invocation (one sample) over `runs` invocations.
        runs: the number of timed invocations.
    """

    max_abs_difference: float
    tolerance: float
    quantization: str | None
    runs_with_default_delegates: bool
    fully_delegated: bool
    undelegated_ops: tuple[str, ...]
    delegate_error: str | None
    size_bytes: int
    gzip_bytes: int
    latency_ms: float
    runs: int

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_difference <= self.tolerance

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["undelegated_ops"] = list(self.undelegated_ops)
        values["within_tolerance"] = self.within_tolerance
        return values

    def __str__(self) -> str:
        if not self.runs_with_default_delegates:
            kernels = f"FAILS with default delegates ({self.delegate_error}); measured on builtin kernels"
        elif self.fully_delegated:
            kernels = "every node delegated to XNNPack"
        else:
            kernels = "XNNPack left to builtin kernels: " + ", ".join(self.undelegated_ops)
        verdict = "within" if self.within_tolerance else "OUTSIDE"
        return (
            f"TFLite ({self.quantization or 'float32'}): {self.size_bytes:,} bytes, "
            f"{self.gzip_bytes:,} gzipped; max |difference| {self.max_abs_difference:.3g} ({verdict} "
            f"tolerance {self.tolerance:.3g}); median latency {self.latency_ms:.3f} ms over "
            f"{self.runs} runs; {kernels}"
        )


def verify_tflite(tflite, keras_model: keras.Model, inputs, runs: int = 50) -> TFLiteReport:
    """Runs a TFLite file in LiteRT with its default delegates and compares it with a Keras model.

    Each sample is run through the file one at a time. When the default delegates fail to prepare
    the file, the report says so and the other numbers come from LiteRT's builtin kernels.

    Args:
        tflite: the file's bytes, or its path.
        keras_model: the Keras model the file was converted from (pruned, stripped or plain).
        inputs: sample inputs: a numpy array, or a list with one array per model input.
        runs: how many invocations to time for the median latency.

    Returns:
        A `TFLiteReport`: max abs difference and its tolerance, whether XNNPack delegated every
        node, file size raw and gzipped, median latency.

    Example:

    ```python
    report = tfsparse.export.verify_tflite("model.tflite", model, x_test[:32])
    print(report)
    assert report.fully_delegated and report.within_tolerance
    ```
    """
    flatbuffer = _read(tflite)
    check_model(keras_model, "keras_model")
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"Argument `runs` must be a positive integer. Received: runs={runs!r}")
    inputs = as_input_list(keras_model, inputs, "inputs")
    try:
        builtin = open_interpreter(flatbuffer, default_delegates=False)
    except RuntimeError as error:
        raise ValueError(f"Argument `tflite` is not a TFLite file LiteRT can load: {error}") from None
    model_nodes = len(node_details(builtin))
    error = None
    try:
        interpreter = open_interpreter(flatbuffer)
        left_out = [node["op_name"] for node in undelegated_nodes(interpreter, model_nodes)]
    except RuntimeError as failure:
        error = str(failure)
        interpreter, left_out = builtin, [node["op_name"] for node in node_details(builtin)]
    runner = _Runner(interpreter, keras_model)
    expected = keras_outputs(keras_model, inputs)
    actual = runner.run(inputs)
    if len(actual) != len(expected):
        raise ValueError(
            f"Argument `tflite` has {len(actual)} outputs and `keras_model` {len(expected)}: "
            "they are not the same model."
        )
    difference = max(float(np.max(np.abs(a.reshape(e.shape) - e))) for a, e in zip(actual, expected))
    peak = max(float(np.max(np.abs(e))) for e in expected)
    quantization = detect_quantization(builtin)
    return TFLiteReport(
        max_abs_difference=difference,
        tolerance=TOLERANCES[quantization] * max(peak, 1e-6),
        quantization=quantization,
        runs_with_default_delegates=error is None,
        fully_delegated=error is None and not left_out,
        undelegated_ops=tuple(left_out),
        delegate_error=error,
        size_bytes=len(flatbuffer),
        gzip_bytes=len(gzip.compress(flatbuffer, compresslevel=9, mtime=0)),
        latency_ms=runner.median_latency_ms(inputs, runs),
        runs=runs,
    )
