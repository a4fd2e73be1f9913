"""Per-tensor sparsity of the weights stored in a TFLite flatbuffer."""

from __future__ import annotations

import keras
import numpy as np

from tfsparse.analysis.report import SparsityReport, WeightSparsity

L = keras.layers


_TFLITE_DTYPES = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "FLOAT64": np.float64,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
}
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64")


def _tflite_schema():
    # The flatbuffer schema ships with LiteRT and with TensorFlow; either reads the file without
    # loading a runtime.
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def _enum_names(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def _buffer_bytes(buffer, content: bytes) -> bytes:
    if buffer.data is not None and len(buffer.data):
        return bytes(np.asarray(buffer.data, dtype=np.uint8))
    if buffer.offset > 1 and buffer.size:  # models over 2 GB keep weights after the flatbuffer
        return content[buffer.offset : buffer.offset + buffer.size]
    return b""


def _nonzeros(values: np.ndarray, quantization, sparse: bool, shape: tuple) -> int:
    zero_points = None if quantization is None else quantization.zeroPoint
    if zero_points is None or len(zero_points) == 0 or not np.any(zero_points):
        return int(np.count_nonzero(values))
    zero_points = np.asarray(zero_points)
    if len(zero_points) == 1 or sparse:
        return int(np.count_nonzero(values != zero_points.flat[0]))
    # Per-channel zero points lie along the quantized dimension.
    broadcast = [1] * len(shape)
    broadcast[quantization.quantizedDimension] = len(zero_points)
    return int(np.count_nonzero(values.reshape(shape) != zero_points.reshape(broadcast)))


def tflite_sparsity_report(tflite: bytes | str) -> SparsityReport:
    """Per-tensor sparsity of the weights stored in a TFLite flatbuffer.

    Reads the file's constant tensors of floating-point type, and of integer type where they are
    quantized (int8 weights, int32 biases); integer constants without quantization (shapes,
    indices) are left out. Sparse-encoded tensors store only part of their values: `stored` says
    how many, and non-zeros are counted among them. A quantized value counts as zero when it equals
    its zero point. Layer names are not kept in a TFLite file; rows are named by tensor.

    Args:
        tflite: the flatbuffer bytes, or the path of a `.tflite` file.

    Returns:
        A `SparsityReport` whose rows carry `encoding` ("dense" or "sparse") and `stored`.

    Example:

    ```python
    print(tflite_sparsity_report("model.tflite"))
    ```
    """
    if isinstance(tflite, (bytes, bytearray)):
        content, name = bytes(tflite), "TFLite model"
    else:
        with open(tflite, "rb") as file:
            content = file.read()
        name = f"TFLite file '{tflite}'"
    if content[4:8] != b"TFL3":
        raise ValueError(f"{name} is not a TFLite flatbuffer (no 'TFL3' identifier).")
    schema = _tflite_schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    except Exception as error:  # a truncated or damaged flatbuffer fails anywhere inside the parser
        raise ValueError(f"{name} is damaged: its flatbuffer cannot be read ({error}).") from None
    type_names = _enum_names(schema.TensorType)
    op_names = _enum_names(schema.BuiltinOperator)
    rows, seen_buffers, op_counts = [], set(), {}
    for index, subgraph in enumerate(model.subgraphs or ()):
        for operator in subgraph.operators or ():
            code = model.operatorCodes[operator.opcodeIndex]
            op = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            op_counts[op] = op_counts.get(op, 0) + 1
        prefix = f"subgraph {index}: " if len(model.subgraphs) > 1 else ""
        for tensor in subgraph.tensors or ():
            type_name = type_names.get(tensor.type, str(tensor.type))
            quantized = tensor.quantization is not None and tensor.quantization.scale is not None
            if type_name not in _TFLITE_DTYPES or not (type_name in _FLOAT_TYPES or quantized):
                continue
            if tensor.buffer in seen_buffers:
                continue
            data = _buffer_bytes(model.buffers[tensor.buffer], content)
            if not data:
                continue  # not a constant: an activation or an input
            seen_buffers.add(tensor.buffer)
            values = np.frombuffer(data, dtype=_TFLITE_DTYPES[type_name])
            shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
            sparse = tensor.sparsity is not None
            rows.append(
                WeightSparsity(
                    layer=prefix + (tensor.name or b"").decode("utf-8", "replace"),
                    weight="",
                    shape=shape,
                    dtype=type_name.lower(),
                    nonzeros=_nonzeros(values, tensor.quantization, sparse, shape),
                    encoding="sparse" if sparse else "dense",
                    stored=int(values.size),
                )
            )
    ops_text = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(op_counts.items()))
    return SparsityReport(tuple(rows), title=f"{name}: {len(content):,} bytes; ops: {ops_text}")
