"""Editing a converted TFLite file: storing chosen sparse weights densely again.

With `Optimize.EXPERIMENTAL_SPARSITY` the converter stores a pruned weight in a compressed sparse
format and adds a DENSIFY node that expands it when the model is prepared. Replacing that pair by
the expanded constant gives back the dense encoding for that one weight and leaves the others sparse.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from tfsparse.export._litert import node_details, open_interpreter


def densify_nodes(interpreter_nodes: list[dict]) -> dict[int, int]:
    """{index of each DENSIFY node: index of the node that consumes its output}."""
    consumers = {}
    for node in interpreter_nodes:
        for tensor in node["inputs"]:
            consumers.setdefault(tensor, node["index"])
    return {
        node["index"]: consumers.get(node["outputs"][0], -1)
        for node in interpreter_nodes
        if node["op_name"] == "DENSIFY"
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


def _densify_operators(model) -> list[tuple[int, object]]:
    """(index, operator) of each DENSIFY operator of the main subgraph."""
    found = []
    for index, operator in enumerate(model.subgraphs[0].operators or ()):
        code = model.operatorCodes[operator.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DENSIFY:
            found.append((index, operator))
    return found


def sparse_weight_count(flatbuffer: bytes) -> int:
    """How many weights the file stores in the sparse encoding (one DENSIFY node each)."""
    return len(_densify_operators(flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))))


def densify_not_paying(flatbuffer: bytes) -> list[int]:
    """Indices of the DENSIFY nodes whose sparse weight takes at least as many bytes as dense.

    Small or barely pruned weights (a 3x3 kernel of 8 filters) cost more in indices than they save.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    not_paying = []
    for index, operator in _densify_operators(model):
        sparse = subgraph.tensors[int(operator.inputs[0])]
        dense = subgraph.tensors[int(operator.outputs[0])]
        dense_bytes = (
            int(np.prod(dense.shape)) * np.dtype(flatbuffer_utils.type_to_name(dense.type).lower()).itemsize
        )
        if dense_bytes <= _sparse_bytes(model, sparse):
            not_paying.append(index)
    return not_paying


def _expanded_values(flatbuffer: bytes, tensors: Iterable[int]) -> dict[int, np.ndarray]:
    # The builtin DENSIFY kernel expands exactly what the sparse format encodes; reading its
    # outputs avoids reimplementing the format's traversal orders and block maps.
    interpreter = open_interpreter(
        flatbuffer, default_delegates=False, experimental_preserve_all_tensors=True
    )
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    return {tensor: np.array(interpreter.get_tensor(tensor)) for tensor in tensors}


def _remap(indices, mapping: dict[int, int]):
    if indices is None:
        return None
    return np.array([mapping.get(int(i), int(i)) for i in indices], dtype=np.int32)


def _drop_unused_operator_codes(model) -> None:
    used = sorted({int(op.opcodeIndex) for graph in model.subgraphs for op in graph.operators or ()})
    mapping = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[old] for old in used]
    for graph in model.subgraphs:
        for operator in graph.operators or ():
            operator.opcodeIndex = mapping[int(operator.opcodeIndex)]


def store_densely(flatbuffer: bytes, densify_indices: Iterable[int]) -> bytes:
    """The file with the weights expanded by the given DENSIFY nodes stored dense, those nodes removed.

    Each DENSIFY node's output becomes a constant holding the expanded values (with the output's
    own quantization); the sparse input tensor and its data are dropped.
    """
    densify_indices = sorted(set(densify_indices))
    if not densify_indices:
        return flatbuffer
    nodes = node_details(open_interpreter(flatbuffer, default_delegates=False))
    outputs = {index: nodes[index]["outputs"][0] for index in densify_indices}
    values = _expanded_values(flatbuffer, outputs.values())

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    removed_tensors = set()
    for index in densify_indices:
        operator = subgraph.operators[index]
        sparse_tensor = int(operator.inputs[0])
        dense_tensor = subgraph.tensors[int(operator.outputs[0])]
        data = np.frombuffer(values[outputs[index]].tobytes(), dtype=np.uint8)
        buffer_index = subgraph.tensors[sparse_tensor].buffer
        shared = any(
            tensor.buffer == buffer_index
            for graph in model.subgraphs
            for number, tensor in enumerate(graph.tensors)
            if not (graph is subgraph and number == sparse_tensor)
        )
        if shared:
            model.buffers.append(schema.BufferT())
            buffer_index = len(model.buffers) - 1
        model.buffers[buffer_index] = schema.BufferT()
        model.buffers[buffer_index].data = data
        dense_tensor.buffer = buffer_index
        removed_tensors.add(sparse_tensor)
    subgraph.operators = [op for number, op in enumerate(subgraph.operators) if number not in densify_indices]
    _drop_unused_operator_codes(model)

    # Dropping tensors shifts the indices of those after them, wherever tensors are referenced.
    kept = [number for number in range(len(subgraph.tensors)) if number not in removed_tensors]
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
    return flatbuffer_utils.convert_object_to_bytearray(model)
