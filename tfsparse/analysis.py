"""What a model holds and costs: per-weight sparsity, parameter counts and FLOPs.

Pure functions over a model's layers: they read weights and the shapes recorded in the model's graph,
and work on pruned (wrapped), stripped and plain models alike, nested models included. Pruned
layers are reported by their inner layer's name with their masked weights, so the report of a pruned
model and of its stripped copy match row for row.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from tfsparse import registry
from tfsparse.wrapper import PruneLowMagnitude

__all__ = [
    "ParameterCount",
    "SparsityReport",
    "Totals",
    "WeightSparsity",
    "count_flops",
    "count_parameters",
    "flops_by_layer",
    "sparsity_report",
    "tflite_sparsity_report",
]

L = keras.layers


# -- sparsity report -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """One row of a `SparsityReport`: a weight, its shape and how many of its values are non-zero.

    `prunable` says whether tfsparse prunes this weight (kernels, not biases or batch-norm statistics).
    `encoding` is set for tensors read from a TFLite file: "dense", or "sparse" when the file stores
    only part of the values (`stored`).
    """

    layer: str
    weight: str
    shape: tuple[int, ...]
    dtype: str
    nonzeros: int
    prunable: bool = False
    encoding: str | None = None
    stored: int | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class Totals:
    """Sums over rows of a report: `size` values, of which `nonzeros` are non-zero."""

    size: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.size if self.size else 0.0

    def as_dict(self) -> dict:
        return {"size": self.size, "nonzeros": self.nonzeros, "sparsity": self.sparsity}


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-weight sparsity of a model; `str(report)` is an aligned table, `as_dict()` plain data."""

    rows: tuple[WeightSparsity, ...]
    title: str = ""

    @property
    def totals(self) -> Totals:
        """Over every weight in the report."""
        return _sum(self.rows)

    @property
    def prunable_totals(self) -> Totals:
        """Over the weights tfsparse prunes (the sparsity a pruning schedule aims at)."""
        return _sum(row for row in self.rows if row.prunable)

    def as_dict(self) -> dict:
        rows = []
        for row in self.rows:
            entry = dataclasses.asdict(row)
            entry.update(shape=list(row.shape), size=row.size, sparsity=row.sparsity)
            rows.append(entry)
        return {
            "title": self.title,
            "rows": rows,
            "totals": self.totals.as_dict(),
            "prunable_totals": self.prunable_totals.as_dict(),
        }

    def __str__(self) -> str:
        from_file = any(row.encoding is not None for row in self.rows)
        headers = ["Tensor", "Encoding"] if from_file else ["Layer", "Weight"]
        headers += ["Shape", "Dtype", "Non-zeros", "Size", "Sparsity"]
        table = []
        for row in self.rows:
            second = row.encoding if from_file else row.weight + ("*" if row.prunable else "")
            if from_file and row.stored is not None and row.stored != row.size:
                second = f"{row.encoding}, {row.stored:,} stored"
            table.append(
                [row.layer, second, _shape(row.shape), row.dtype, f"{row.nonzeros:,}", f"{row.size:,}"]
                + [f"{row.sparsity:.1%}"]
            )
        footer = [["Total", "all weights", "", "", *_total_cells(self.totals)]]
        if any(row.prunable for row in self.rows):
            footer.append(["Total", "pruned weights*", "", "", *_total_cells(self.prunable_totals)])
        text = format_table(headers, table, footer=footer, right=(4, 5, 6))
        return f"{self.title}\n{text}" if self.title else text


def _sum(rows) -> Totals:
    size = nonzeros = 0
    for row in rows:
        size += row.size
        nonzeros += row.nonzeros
    return Totals(size, nonzeros)


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _total_cells(totals: Totals) -> list[str]:
    return [f"{totals.nonzeros:,}", f"{totals.size:,}", f"{totals.sparsity:.1%}"]


def format_table(headers: Sequence[str], rows, footer=(), right: Sequence[int] = ()) -> str:
    """An aligned plain-text table; columns whose index is in `right` are right-aligned."""
    cells = [
        list(map(str, headers)),
        *[list(map(str, r)) for r in rows],
        *[list(map(str, r)) for r in footer],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        parts = [
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(cells[0]), rule, *[line(r) for r in cells[1 : 1 + len(rows)]]]
    if footer:
        lines += [rule, *[line(r) for r in cells[1 + len(rows) :]]]
    return "\n".join(lines)


def _weight_label(layer: keras.layers.Layer, variable) -> str:
    # Variable paths carry the enclosing layers ("lstm/lstm_cell/kernel"); the label is the part
    # below the layer, so sublayer weights stay distinguishable.
    parts = variable.path.split("/")
    if layer.name in parts[:-1]:
        return "/".join(parts[parts.index(layer.name) + 1 :])
    return variable.name


def _prunable_ids(layer: keras.layers.Layer) -> set[int]:
    try:
        if registry.is_prunable(layer):
            return {id(w) for w in registry.prunable_weights(layer)}
    except ValueError:  # a custom layer with weights tfsparse does not know: none of them pruned
        pass
    return set()


def _weights(
    model: keras.layers.Layer, prefix: str = ""
) -> Iterator[tuple[str, keras.layers.Layer, object, np.ndarray]]:
    """(layer path, layer, variable, value) for every weight, masked where a wrapper prunes it."""
    seen: set[int] = set()

    def visit(layer, prefix):
        if isinstance(layer, PruneLowMagnitude):
            inner = layer.layer
            values = layer.masked_weights() if layer.built else []
            for variable, value in zip(inner.weights, values):
                yield f"{prefix}{inner.name}", inner, variable, value
        elif isinstance(layer, keras.Model):
            for child in layer.layers:
                yield from visit(child, f"{prefix}{layer.name}/" if layer is not model else prefix)
        else:
            for variable in layer.weights:
                yield f"{prefix}{layer.name}", layer, variable, ops.convert_to_numpy(variable.value)

    for path, layer, variable, value in visit(model, prefix):
        if id(variable) not in seen:  # shared layers and tied weights are counted once
            seen.add(id(variable))
            yield path, layer, variable, value


def sparsity_report(model: keras.layers.Layer) -> SparsityReport:
    """A row per weight of `model`: layer, weight, shape, non-zeros and sparsity, plus totals.

    Pruned layers (`PruneLowMagnitude`) are reported under their inner layer's name, with the masks
    applied; the masks and pruning steps themselves are bookkeeping and not listed. Weights marked
    `prunable` are those tfsparse prunes; `prunable_totals` sums over them.

    Args:
        model: a Keras model (pruned, stripped or plain; nested models included) or a single layer.

    Returns:
        A `SparsityReport` with `rows`, `totals`, `prunable_totals`, `as_dict()`; `str()` is a table.

    Example:

    ```python
    report = tfsparse.analysis.sparsity_report(tfsparse.strip_pruning(pruned))
    print(report)
    report.prunable_totals.sparsity  # 0.9
    ```
    """
    rows = []
    prunable_cache: dict[int, set[int]] = {}
    for path, layer, variable, value in _weights(model):
        if id(layer) not in prunable_cache:
            prunable_cache[id(layer)] = _prunable_ids(layer)
        rows.append(
            WeightSparsity(
                layer=path,
                weight=_weight_label(layer, variable),
                shape=tuple(int(d) for d in value.shape),
                dtype=str(value.dtype),
                nonzeros=int(np.count_nonzero(value)),
                prunable=id(variable) in prunable_cache[id(layer)],
            )
        )
    return SparsityReport(tuple(rows), title=f"Model '{model.name}'")


class ParameterCount(NamedTuple):
    """How many parameters a model has (`total`) and how many of them are non-zero (`nonzero`)."""

    total: int
    nonzero: int


def count_parameters(model: keras.layers.Layer) -> ParameterCount:
    """The number of parameters of `model`, and how many are non-zero.

    Counts every weight, trainable or not (as `model.count_params()` does); for a pruned model the
    masks and pruning steps are left out, so it equals the count of the stripped model.

    Args:
        model: a Keras model (pruned, stripped or plain; nested models included) or a single layer.

    Returns:
        `ParameterCount(total, nonzero)`, a tuple with those two attributes.

    Example:

    ```python
    layer = keras.layers.Dense(4)
    layer.build((None, 3))
    tfsparse.analysis.count_parameters(layer)  # ParameterCount(total=16, nonzero=12): zero biases
    ```
    """
    totals = sparsity_report(model).totals
    return ParameterCount(totals.size, totals.nonzeros)


# -- FLOPs -----------------------------------------------------------------------------------------

_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_POOLING = (
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
)
_GLOBAL_POOLING = (
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
)
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_NORMALIZATIONS = (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization)
_RNNS = (L.LSTM, L.GRU, L.SimpleRNN)


def _node_calls(model: keras.Model, layer: keras.layers.Layer) -> list[tuple[list, list]]:
    """(input shapes, output shapes) of each call of `layer` inside `model`'s graph.

    Keras records calls only as private graph nodes (`_inbound_nodes`, and a model's `_nodes` keys
    to tell its own calls from those in another model sharing the layer); no public API gives the
    shapes of a layer called more than once, so this is the one place that reads them.
    """
    graph = getattr(model, "_functional", None) or model  # a Sequential keeps its graph there
    keys = getattr(graph, "_nodes", None)
    calls = []
    for index, node in enumerate(getattr(layer, "_inbound_nodes", ())):
        if keys is not None and f"{id(layer)}_ib-{index}" not in keys:
            continue
        calls.append(([tuple(t.shape) for t in node.input_tensors], [tuple(t.shape) for t in node.outputs]))
    return calls


def _per_example(shape, layer) -> tuple[int, ...]:
    dims = tuple(shape[1:])
    if any(d is None for d in dims):
        raise ValueError(
            f"`count_flops` needs fixed shapes, but layer '{layer.name}' sees shape {tuple(shape)}. "
            "Build the model on a `keras.Input` with every dimension but the batch given."
        )
    return (1, *dims)


def _positions(shape, data_format: str) -> int:
    """Spatial positions (everything but batch and channels) of a convolution's input or output."""
    return math.prod(shape[2:] if data_format == "channels_first" else shape[1:-1])


def _affine(uses: int, kernel_count: int, bias) -> int:
    # Every kernel weight takes part in `uses` multiply-adds; every bias value in `uses` adds.
    return 2 * uses * kernel_count + (uses * math.prod(bias.shape) if bias is not None else 0)


def _einsum_uses(layer, output_shape) -> int:
    # A kernel weight is used once for each output position outside the kernel's own output axes.
    _, rest = layer.equation.split(",")
    kernel_spec, output_spec = rest.split("->")
    kernel_in_output = math.prod(
        dim for letter, dim in zip(kernel_spec, layer.kernel.shape) if letter in output_spec
    )
    return math.prod(output_shape) // kernel_in_output


def _layer_flops(layer, inputs: list, outputs: list, count) -> int | None:
    """FLOPs of one call; `count(variable)` is how many of the weight's values are multiplied.

    Returns None for a layer with weights of a kind this module does not know.
    """
    first_in = inputs[0] if inputs else ()
    first_out = outputs[0] if outputs else ()
    out_elements = math.prod(first_out) if outputs else 0
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", True) else None
    if isinstance(layer, L.Dense):
        return _affine(out_elements // layer.units, count(layer.kernel), bias)
    if isinstance(layer, L.EinsumDense):
        return _affine(_einsum_uses(layer, first_out), count(layer.kernel), None) + (
            out_elements if bias is not None else 0
        )
    if isinstance(layer, _CONVOLUTIONS):
        uses = _positions(first_out, layer.data_format)
        return 2 * uses * count(layer.kernel) + (out_elements if bias is not None else 0)
    if isinstance(layer, _TRANSPOSED):
        uses = _positions(first_in, layer.data_format)
        return 2 * uses * count(layer.kernel) + (out_elements if bias is not None else 0)
    if isinstance(layer, _DEPTHWISE):
        uses = _positions(first_out, layer.data_format)
        kernel = registry.prunable_weights(layer)[0]  # the depthwise kernel's name varies by version
        return 2 * uses * count(kernel) + (out_elements if bias is not None else 0)
    if isinstance(layer, _SEPARABLE):
        uses = _positions(first_out, layer.data_format)
        kernels = count(layer.depthwise_kernel) + count(layer.pointwise_kernel)
        return 2 * uses * kernels + (out_elements if bias is not None else 0)
    if isinstance(layer, _RNNS):
        steps = first_in[1]
        cell = layer.cell
        per_step = 2 * (count(cell.kernel) + count(cell.recurrent_kernel))
        return steps * (per_step + (math.prod(cell.bias.shape) if cell.use_bias else 0))
    if isinstance(layer, L.MultiHeadAttention):
        return _attention_flops(layer, inputs, count)
    if isinstance(layer, L.Bidirectional):
        return sum(
            _layer_flops(sub, inputs, outputs, count) or 0
            for sub in (layer.forward_layer, layer.backward_layer)
        )
    if isinstance(layer, L.TimeDistributed):
        steps = first_in[1]
        inner = _layer_flops(layer.layer, [(1, *first_in[2:])], [(1, *first_out[2:])], count)
        return None if inner is None else steps * inner
    if isinstance(layer, _NORMALIZATIONS):
        return 2 * out_elements
    if isinstance(layer, _POOLING):
        return out_elements * math.prod(layer.pool_size)
    if isinstance(layer, _GLOBAL_POOLING):
        return math.prod(first_in)
    if isinstance(layer, _MERGES):
        return (len(inputs) - 1) * out_elements
    if isinstance(layer, L.Embedding) or not layer.weights:
        return 0  # lookups, activations, reshapes, dropout: no arithmetic counted
    return None


def _attention_flops(layer, inputs: list, count) -> int:
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 and len(inputs[2]) == len(value) else value
    query_steps, key_steps = math.prod(query[1:-1]), math.prod(key[1:-1])
    flops = 0
    for dense, steps in (
        (layer.query_dense, query_steps),
        (layer.key_dense, key_steps),
        (layer.value_dense, math.prod(value[1:-1])),
        (layer.output_dense, query_steps),
    ):
        bias = getattr(dense, "bias", None)
        flops += _affine(steps, count(dense.kernel), bias)
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    # Scores (query . key) and the weighted sum of values, per head: multiply-adds.
    return flops + 2 * heads * query_steps * key_steps * (key_dim + value_dim)


def flops_by_layer(model: keras.Model, sparse: bool = False) -> dict[str, int]:
    """FLOPs of each layer of `model` for one example (batch 1), keyed by layer path.

    Conventions: a multiply-add counts as 2 FLOPs; a bias add, a pooled value, and each
    element of a merge (Add, Multiply, ...) as 1; normalization as 2 per element (the scale and
    shift batch normalization folds into at inference; the statistics of layer and group
    normalization are not counted). Activation functions, lookups and reshapes count 0. A layer
    called several times counts each call. Shapes come from the model's graph, so the model must
    be Sequential or functional with fixed input shapes.

    Args:
        model: a built Sequential or functional model (pruned, stripped or plain; nested models too).
        sparse: count only the multiply-adds of non-zero weights, the work a sparse kernel does.

    Returns:
        `{layer path: FLOPs}` for the layers that compute something (nested layers as
        "inner_model/layer"; pruned layers under their inner layer's name).

    Example:

    ```python
    flops_by_layer(model)  # {'conv2d': 10368, 'max_pooling2d': 2048, 'dense': 65600, ...}
    ```
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`count_flops` takes a Keras model. Received: model={model!r} of type {type(model).__name__}"
        )
    result: dict[str, int] = {}
    unknown: list[str] = []

    def visit(graph: keras.Model, prefix: str, repeats: int):
        for layer in graph.layers:
            calls = _node_calls(graph, layer)
            if isinstance(layer, keras.Model) and not isinstance(layer, PruneLowMagnitude):
                if calls or layer.weights:
                    visit(layer, f"{prefix}{layer.name}/", repeats * max(len(calls), 1))
                continue
            inner, count = layer, _counter(None, sparse)
            if isinstance(layer, PruneLowMagnitude):
                inner = layer.layer
                count = _counter(layer, sparse)
            if not calls:
                if layer.weights:
                    raise ValueError(
                        f"`count_flops` reads layer shapes from a Sequential or functional model's "
                        f"graph, but layer '{layer.name}' was never called in one (a subclassed "
                        "model, or a Sequential model that is not built)."
                    )
                continue
            total = 0
            for inputs, outputs in calls:
                inputs = [_per_example(s, layer) for s in inputs]
                outputs = [_per_example(s, layer) for s in outputs]
                flops = _layer_flops(inner, inputs, outputs, count)
                if flops is None:
                    unknown.append(f"{prefix}{inner.name} ({type(inner).__name__})")
                    flops = 0
                total += flops
            if total:
                key = f"{prefix}{inner.name}"
                result[key] = result.get(key, 0) + repeats * total

    visit(model, "", 1)
    if unknown:
        warnings.warn(
            "count_flops does not know these layers with weights and counted them as 0: "
            + ", ".join(dict.fromkeys(unknown)),
            stacklevel=3,
        )
    return result


def _counter(wrapper: PruneLowMagnitude | None, sparse: bool):
    """`count(variable)`: the variable's size, or with `sparse` its non-zeros (masked for wrappers)."""
    if not sparse:
        return lambda variable: math.prod(variable.shape)
    masks = {}
    if wrapper is not None:
        masks = {id(w): m for w, m in zip(wrapper.pruned_weights, wrapper.get_masks())}

    def count(variable):
        value = ops.convert_to_numpy(variable.value)
        if id(variable) in masks:
            value = value * masks[id(variable)]
        return int(np.count_nonzero(value))

    return count


def count_flops(model: keras.Model, sparse: bool = False) -> int:
    """Floating-point operations of one forward pass of `model` for a single example (batch 1).

    A multiply-add counts as 2 FLOPs (see `flops_by_layer` for the full convention). Supported:
    Dense, EinsumDense, Conv1D/2D/3D and their transposes, DepthwiseConv1D/2D, SeparableConv1D/2D,
    LSTM/GRU/SimpleRNN, MultiHeadAttention, Bidirectional, TimeDistributed, pooling, normalization and
    merge layers; layers without weights (activations, reshapes, dropout) count 0; other layers with
    weights count 0 with a warning.

    Args:
        model: a built Sequential or functional model with fixed input shapes.
        sparse: count only multiply-adds with non-zero weights (what a sparse kernel computes);
            the default counts the dense work, which structured pruning reduces.

    Returns:
        The number of FLOPs, an int.

    Example:

    ```python
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    tfsparse.analysis.count_flops(model)  # 28: 12 multiply-adds and 4 bias adds
    ```
    """
    return sum(flops_by_layer(model, sparse=sparse).values())


# -- TFLite files ----------------------------------------------------------------------------------

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
