"""Per-weight sparsity and parameter counts of pruned, stripped and plain models."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from tfsparse import registry
from tfsparse.wrapper import PruneLowMagnitude

L = keras.layers


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
