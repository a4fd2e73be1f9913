"""Reading and editing a converted TFLite file: its sparse weights, and storing chosen ones dense.

With `Optimize.EXPERIMENTAL_SPARSITY` the converter stores a pruned weight in TFLite's sparse
format (a traversal order, optional blocks, and per dimension either a dense size or CSR segments
and indices) and usually adds a DENSIFY node that expands it when the model is prepared; for some
int8 FULLY_CONNECTED weights it lets the op read the sparse tensor directly instead. Storing a
weight dense again means expanding it here, writing the values into the tensor's buffer, and
dropping its DENSIFY node (whose output then is that constant) if it has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT32: np.int32,
}
_INDEX_BYTES = {
    schema.SparseIndexVector.Int32Vector: 4,
    schema.SparseIndexVector.Uint16Vector: 2,
    schema.SparseIndexVector.Uint8Vector: 1,
}
# Flatbuffer tables around a sparse tensor: its sparsity parameters, one per dimension, the extra
# dense tensor and the DENSIFY operator. An estimate; it only matters for weights of a few bytes.
_SPARSE_TABLE_BYTES = 64
_DIMENSION_TABLE_BYTES = 24


@dataclasses.dataclass(frozen=True)
class SparseWeight:
    """A weight stored in the sparse format, and the node that uses it.

    Attributes:
        tensor: index of the sparse tensor in the main subgraph.
        name: the tensor's name, shortened to the first op the converter fused into it.
        shape: the dense shape.
        dtype: numpy name of the element type ("int8", "float32", ...).
        consumer: index of the node that computes with the weight (after its DENSIFY node, if any).
        consumer_op: that node's op name ("FULLY_CONNECTED", ...).
        densify: index of the DENSIFY node that expands the weight, None if the consumer reads
            the sparse tensor directly.
        sparse_bytes: estimated bytes of the sparse encoding.
        dense_bytes: bytes of the dense values.
        fits: whether the encoding can hold the tensor at all: every block size divides its
            dimension. (The TF 2.21 converter gives int8 FULLY_CONNECTED weights 1x16 blocks even
            when a row has fewer than 16 columns, dropping values.)
    """

    tensor: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    consumer: int
    consumer_op: str
    densify: int | None
    sparse_bytes: int
    dense_bytes: int
    fits: bool

    def describe(self) -> str:
        shape = "x".join(str(d) for d in self.shape)
        return f"{self.consumer_op} weight '{self.name}' ({shape} {self.dtype})"


def _read(flatbuffer: bytes):
    return flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))


def _op_name(model, operator) -> str:
    return flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex) or "CUSTOM"


def _sparse_bytes(model, tensor) -> int:
    data = model.buffers[tensor.buffer].data
    size = (0 if data is None else len(data)) + _SPARSE_TABLE_BYTES
    for dimension in tensor.sparsity.dimMetadata or ():
        size += _DIMENSION_TABLE_BYTES
        for kind, vector in (
            (dimension.arraySegmentsType, dimension.arraySegments),
            (dimension.arrayIndicesType, dimension.arrayIndices),
        ):
            if vector is not None:
                size += len(vector.values) * _INDEX_BYTES.get(kind, 4)
    return size


def _blocks(tensor) -> list[tuple[int, int]]:
    """(dimension, block size) of each blocked dimension of a sparse tensor."""
    sparsity = tensor.sparsity
    order = [int(d) for d in sparsity.traversalOrder]
    block_map = [int(d) for d in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    rank = len(tensor.shape)
    return [
        (block_map[order[level] - rank], int(sparsity.dimMetadata[level].denseSize))
        for level in range(rank, len(order))
    ]


def sparse_weights(flatbuffer: bytes) -> list[SparseWeight]:
    """Every weight of the main subgraph stored in the sparse format, in tensor order."""
    model = _read(flatbuffer)
    subgraph = model.subgraphs[0]
    readers: dict[int, list[int]] = {}
    for number, operator in enumerate(subgraph.operators or ()):
        for tensor in operator.inputs:
            readers.setdefault(int(tensor), []).append(number)
    found = []
    for number, tensor in enumerate(subgraph.tensors):
        if tensor.sparsity is None or not readers.get(number):
            continue
        reader = readers[number][0]
        densify = None
        if _op_name(model, subgraph.operators[reader]) == "DENSIFY":
            densify = reader
            reader = readers.get(int(subgraph.operators[reader].outputs[0]), [-1])[0]
        dtype = np.dtype(_NUMPY_TYPES.get(tensor.type, np.float32))
        found.append(
            SparseWeight(
                tensor=number,
                name=(tensor.name or b"").decode(errors="replace").split(";")[0],
                shape=tuple(int(d) for d in tensor.shape),
                dtype=dtype.name,
                consumer=reader,
                consumer_op=_op_name(model, subgraph.operators[reader]) if reader >= 0 else "?",
                densify=densify,
                sparse_bytes=_sparse_bytes(model, tensor),
                dense_bytes=int(np.prod(tensor.shape)) * dtype.itemsize,
                fits=all(tensor.shape[dimension] % size == 0 for dimension, size in _blocks(tensor)),
            )
        )
    return found


def expanded(model, tensor) -> np.ndarray:
    """The dense values of a sparse tensor (`model`, `tensor`: flatbuffer objects).

    Walks the traversal order level by level, as LiteRT's format converter does: a DENSE level
    enumerates all its positions, a CSR level the indices its segments list; the leaves, in
    order, are the stored values. Block levels then refine the block indices of their dimensions.
    """
    sparsity = tensor.sparsity
    dtype = np.dtype(_NUMPY_TYPES[tensor.type]).newbyteorder("<")
    values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=dtype)
    order = [int(d) for d in sparsity.traversalOrder]
    shape = [int(d) for d in tensor.shape]
    rank = len(shape)
    blocks = _blocks(tensor)
    if any(shape[dimension] % size for dimension, size in blocks):
        raise ValueError(f"the sparse encoding's blocks {blocks} do not fit the tensor's shape {shape}")

    positions = np.zeros(1, dtype=np.int64)
    levels: list[np.ndarray] = []
    for dimension in sparsity.dimMetadata:
        if dimension.format == schema.DimensionType.DENSE:
            size = int(dimension.denseSize)
            levels = [np.repeat(level, size) for level in levels]
            levels.append(np.tile(np.arange(size, dtype=np.int64), len(positions)))
            positions = (positions[:, None] * size + np.arange(size)).ravel()
        else:
            segments = np.asarray(dimension.arraySegments.values, dtype=np.int64)
            indices = np.asarray(dimension.arrayIndices.values, dtype=np.int64)
            starts, counts = segments[positions], segments[positions + 1] - segments[positions]
            levels = [np.repeat(level, counts) for level in levels]
            offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
            positions = np.arange(int(counts.sum()), dtype=np.int64) + offsets
            levels.append(indices[positions])

    coordinates: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * rank
    for level in range(rank):
        coordinates[order[level]] = levels[level]
    for level, (dimension, size) in zip(range(rank, len(order)), blocks):
        coordinates[dimension] = coordinates[dimension] * size + levels[level]
    if len(positions) != len(values):
        raise ValueError(f"the sparse encoding lists {len(positions)} values and stores {len(values)}")
    dense = np.zeros(shape, dtype=dtype)
    dense[tuple(coordinates)] = values
    return dense


def _remap(indices, mapping: dict[int, int]):
    if indices is None:
        return None
    return np.array([mapping.get(int(i), int(i)) for i in indices], dtype=np.int32)


def _drop_tensors(model, subgraph, removed: set[int]) -> None:
    # Dropping tensors shifts the indices of those after them, wherever tensors are referenced.
    kept = [number for number in range(len(subgraph.tensors)) if number not in removed]
    mapping = {old: new for new, old in enumerate(kept)}
    subgraph.tensors = [subgraph.tensors[number] for number in kept]
    for operator in subgraph.operators:
        operator.inputs = _remap(operator.inputs, mapping)
        operator.outputs = _remap(operator.outputs, mapping)
        operator.intermediates = _remap(operator.intermediates, mapping)
    subgraph.inputs = _remap(subgraph.inputs, mapping)
    subgraph.outputs = _remap(subgraph.outputs, mapping)
    for signature in model.signatureDefs or ():
        if signature.subgraphIndex == 0:
            for tensor_map in (signature.inputs or []) + (signature.outputs or []):
                tensor_map.tensorIndex = mapping[int(tensor_map.tensorIndex)]


def _drop_unused_operator_codes(model) -> None:
    used = sorted({int(op.opcodeIndex) for graph in model.subgraphs for op in graph.operators or ()})
    mapping = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[old] for old in used]
    for graph in model.subgraphs:
        for operator in graph.operators or ():
            operator.opcodeIndex = mapping[int(operator.opcodeIndex)]


def _own_buffer(model, subgraph, tensor_index: int) -> int:
    """The index of a buffer only `tensor_index` uses: its own, or a new one if it shares it."""
    buffer_index = subgraph.tensors[tensor_index].buffer
    shared = any(
        tensor.buffer == buffer_index
        for graph in model.subgraphs
        for number, tensor in enumerate(graph.tensors)
        if not (graph is subgraph and number == tensor_index)
    )
    if shared:
        model.buffers.append(schema.BufferT())
        buffer_index = len(model.buffers) - 1
    return buffer_index


def _densify_code(model) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DENSIFY:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DENSIFY
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def through_densify(flatbuffer: bytes, weights: Iterable[SparseWeight]) -> bytes:
    """The file with each given weight, read sparse by its op, expanded by a new DENSIFY node first.

    The weight stays stored sparse, and its op gets a dense weight as with every other sparse
    weight, which XNNPack can take.
    """
    weights = [weight for weight in weights if weight.densify is None]
    if not weights:
        return flatbuffer
    model = _read(flatbuffer)
    subgraph = model.subgraphs[0]
    code_index = _densify_code(model)
    densify_operators = []
    for weight in weights:
        sparse = subgraph.tensors[weight.tensor]
        dense = schema.TensorT()
        dense.shape = np.array(sparse.shape, dtype=np.int32)
        dense.type = sparse.type
        dense.quantization = sparse.quantization
        dense.name = (sparse.name or b"") + b"/densified"
        model.buffers.append(schema.BufferT())  # empty: the tensor is computed, not stored
        dense.buffer = len(model.buffers) - 1
        subgraph.tensors.append(dense)
        dense_index = len(subgraph.tensors) - 1
        for operator in subgraph.operators:
            operator.inputs = np.array(
                [dense_index if int(i) == weight.tensor else int(i) for i in operator.inputs], dtype=np.int32
            )
        operator = schema.OperatorT()
        operator.opcodeIndex = code_index
        operator.inputs = np.array([weight.tensor], dtype=np.int32)
        operator.outputs = np.array([dense_index], dtype=np.int32)
        operator.builtinOptionsType = schema.BuiltinOptions.DensifyOptions
        operator.builtinOptions = schema.DensifyOptionsT()
        densify_operators.append(operator)
    # The new nodes read constants only, so they can run first.
    subgraph.operators = densify_operators + list(subgraph.operators)
    return flatbuffer_utils.convert_object_to_bytearray(model)


def store_densely(flatbuffer: bytes, weights: Iterable[SparseWeight]) -> bytes:
    """The file with the given sparse weights stored dense and their DENSIFY nodes removed."""
    weights = list(weights)
    if not weights:
        return flatbuffer
    model = _read(flatbuffer)
    subgraph = model.subgraphs[0]
    removed_tensors, removed_operators = set(), set()
    for weight in weights:
        sparse = subgraph.tensors[weight.tensor]
        data = np.frombuffer(expanded(model, sparse).tobytes(), dtype=np.uint8)
        buffer_index = _own_buffer(model, subgraph, weight.tensor)
        model.buffers[buffer_index] = schema.BufferT()
        model.buffers[buffer_index].data = data
        if weight.densify is None:
            sparse.sparsity = None
            sparse.buffer = buffer_index
            continue
        # The DENSIFY output (with its own quantization) becomes the constant; the sparse
        # tensor and the node go.
        subgraph.tensors[int(subgraph.operators[weight.densify].outputs[0])].buffer = buffer_index
        removed_tensors.add(weight.tensor)
        removed_operators.add(weight.densify)
    subgraph.operators = [
        op for number, op in enumerate(subgraph.operators) if number not in removed_operators
    ]
    _drop_unused_operator_codes(model)
    _drop_tensors(model, subgraph, removed_tensors)
    return flatbuffer_utils.convert_object_to_bytearray(model)
