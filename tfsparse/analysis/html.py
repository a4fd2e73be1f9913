"""The interactive pruning report: one self-contained HTML file (no network, scripts and styles inline).

The page holds a table of every layer (sparsity, parameters and FLOPs as sortable bars), a slider for
an overall target sparsity that shows the per-layer sparsities it gives and the parameters and FLOPs
that result, sensitivity curves when a scan is given, and channel dependency groups when a graph is
given. Everything the page computes comes from data embedded in it as JSON; see `html_report`.
"""

from __future__ import annotations

import html
import json
import math
import os
import warnings
from collections.abc import Mapping

import keras
import numpy as np
from keras import ops

from tfsparse import _files, registry
from tfsparse.analysis._html_page import PAGE
from tfsparse.analysis.flops import flops_by_layer
from tfsparse.analysis.report import sparsity_report
from tfsparse.analysis.tflite_report import tflite_sparsity_report
from tfsparse.wrapper import PruneLowMagnitude

# Points of each layer's table of weight magnitudes: |w| at the quantiles 0, 1/Q, ..., 1.
QUANTILES = 100
_LOWER_IS_BETTER = ("loss", "error", "perplexity", "mse", "mae", "rmse", "distance")


def html_report(
    model_or_path,
    path,
    scan=None,
    graph=None,
    overwrite: bool = False,
    title: str | None = None,
) -> str:
    """Writes an interactive, self-contained HTML report of a model's sparsity, parameters and FLOPs.

    The page needs no network: its styles, script and data are inline. It shows:

    - a table with a row per layer: sparsity, parameters (non-zero of total) and FLOPs per example
      (dense, and counting only non-zero weights) as bars; click a header to sort;
    - a slider for an overall target sparsity of the prunable weights, with the per-layer
      sparsities it gives and the parameters and FLOPs that result. Per-layer sparsities come from
      one of three rules: *uniform* (every prunable layer at the target), *global magnitude* (one
      magnitude threshold across all layers, so that the target share of all prunable weights falls
      below it; each layer's magnitudes are embedded as a table of `QUANTILES + 1` quantiles, and
      the page finds the threshold by bisection), and, when `scan` is given, *sensitivity* (one
      tolerated loss of the scan's metric for every layer: each layer gets the highest sparsity
      whose metric, interpolated along its scanned curve, stays within the tolerance; the page
      finds the tolerance that meets the target). A layer is never shown below the sparsity it has
      now. A layer's FLOPs at a sparsity are its fixed work (bias adds, pooling, normalization)
      plus its multiply-adds scaled by the kept share of its pruned weights;
    - the sensitivity curves of `scan`, metric against sparsity per layer;
    - the channel dependency groups of `graph`.

    For a `.tflite` file the rows are its constant weight tensors (a TFLite file keeps no layer
    names) with their stored encoding; tensors of rank 2 and more count as prunable; FLOPs are
    not counted and only the uniform rule applies.

    `path` is written atomically (a temporary file beside it, then a rename). The URL fragment
    sets the slider when the page opens, e.g. `report.html#target=0.8&rule=global`.

    Args:
        model_or_path: a Keras model (pruned, stripped or plain), or the path of a `.keras`, `.h5`
            or `.tflite` file (Keras files load in safe mode).
        path: the `.html` file to write.
        scan: a sensitivity scan: an object with `results` (`{layer name: {sparsity: metric}}`)
            and `metric` (the metric's name), or that dict of results itself. Metrics named like a
            loss or error ("loss", "mse", ...) count as lower-is-better, others higher-is-better.
        graph: a channel dependency graph: an object whose `to_dict()` returns
            `{"groups": [{"index", "channels", "prunable", "members": [{"layer", "kind"}]}]}`, or
            that dict itself.
        overwrite: replace an existing file at `path`.
        title: the page's heading (default: the model's name or the file's name).

    Returns:
        `path`, as a string.

    Example:

    ```python
    tfsparse.analysis.html_report(pruned, "report.html")
    tfsparse.analysis.html_report("model.tflite", "tflite.html", overwrite=True)
    ```
    """
    path = _files.check_output_argument(path, overwrite, suffixes=(".html", ".htm"))
    if isinstance(model_or_path, keras.Model):
        data = _keras_data(model_or_path, source=f"Keras model '{model_or_path.name}'")
    elif isinstance(model_or_path, (str, os.PathLike)):
        source = os.fspath(model_or_path)
        if source.lower().endswith(".tflite"):
            _files.check_input_file(source, (".tflite",))
            data = _tflite_data(source)
        else:
            _files.check_input_file(source, (*_files.MODEL_SUFFIXES, ".tflite"))
            data = _keras_data(_files.load_model(source), source=os.path.basename(source))
    else:
        raise ValueError(
            "Argument `model_or_path` must be a Keras model or the path of a .keras, .h5 or .tflite "
            f"file. Received: model_or_path={model_or_path!r} of type {type(model_or_path).__name__}"
        )
    names = {layer["name"] for layer in data["layers"]}
    if (scan is not None or graph is not None) and data["kind"] == "tflite":
        raise ValueError(
            "Arguments `scan` and `graph` name Keras layers, and a TFLite file keeps no layer names; "
            "pass the Keras model the file was exported from instead."
        )
    data["scan"] = None if scan is None else _scan_data(scan, names)
    data["groups"] = None if graph is None else _graph_data(graph, names)
    data["title"] = title or data["source"]
    page = _render(data)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(page)

    _files.write_atomically(path, write)
    return path


# -- Keras models ----------------------------------------------------------------------------------


def _layers(model: keras.Model, prefix: str = ""):
    """(path, layer, masked values by variable id) of every layer, in order, nested models walked."""
    for layer in model.layers:
        if isinstance(layer, PruneLowMagnitude):
            inner = layer.layer
            values = layer.masked_weights() if layer.built else []
            yield f"{prefix}{inner.name}", inner, {id(v): x for v, x in zip(inner.weights, values)}
        elif isinstance(layer, keras.Model):
            yield from _layers(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer, {}


def _prunable(layer) -> list:
    try:
        return registry.prunable_weights(layer) if registry.is_prunable(layer) else []
    except ValueError:  # a custom layer tfsparse does not know how to prune: nothing of it is prunable
        return []


def _magnitude_quantiles(values: list[np.ndarray]) -> list[float]:
    magnitudes = np.abs(np.concatenate([np.ravel(v).astype(np.float64) for v in values]))
    table = np.quantile(magnitudes, np.linspace(0.0, 1.0, QUANTILES + 1))
    return [float(f"{value:.5g}") for value in table]


def _flops(model: keras.Model) -> tuple[dict, dict, dict] | None:
    """(dense, sparse, fixed) FLOPs by layer path; fixed is the work left with every pruned weight zero.

    None when the model's graph gives no shapes (subclassed models, unknown input dimensions).
    """
    from tfsparse.prune import strip_pruning

    try:
        dense = flops_by_layer(model)
        sparse = flops_by_layer(model, sparse=True)
        # A copy of stock layers whose pruned weights are set to zero: its sparse count is what does
        # not scale with the kept weights. The user's model is left as it is.
        zeroed = strip_pruning(model)
    except ValueError:
        return None
    for _, layer, _ in _layers(zeroed):
        for variable in _prunable(layer):
            variable.assign(ops.zeros(variable.shape, variable.dtype))
    with warnings.catch_warnings():  # layers it does not know were reported by the first count
        warnings.simplefilter("ignore")
        fixed = flops_by_layer(zeroed, sparse=True)
    return dense, sparse, fixed


def _keras_data(model: keras.Model, source: str) -> dict:
    report = sparsity_report(model)
    rows: dict[str, dict] = {}
    for row in report.rows:
        entry = rows.setdefault(row.layer, {"params": 0, "nonzero": 0, "prunable": 0, "prunable_nonzero": 0})
        entry["params"] += row.size
        entry["nonzero"] += row.nonzeros
        if row.prunable:
            entry["prunable"] += row.size
            entry["prunable_nonzero"] += row.nonzeros
    flops = _flops(model)
    dense, sparse, fixed = flops if flops is not None else ({}, {}, {})
    layers = []
    for name, layer, masked in _layers(model):
        entry = rows.pop(name, None)
        if entry is None and name in dense:  # computes without weights: pooling, merges
            entry = {"params": 0, "nonzero": 0, "prunable": 0, "prunable_nonzero": 0}
        if entry is None:
            continue  # nothing to show, or a shared layer already listed under its first path
        prunable = _prunable(layer) if entry["prunable"] else []
        values = [masked[id(v)] if id(v) in masked else ops.convert_to_numpy(v.value) for v in prunable]
        entry.update(name=name, type=type(layer).__name__)
        entry["quantiles"] = _magnitude_quantiles(values) if values else None
        if flops is not None:
            entry.update(
                flops=dense.get(name, 0), flops_sparse=sparse.get(name, 0), flops_fixed=fixed.get(name, 0)
            )
        layers.append(entry)
    for name, entry in rows.items():  # weights the layer walk did not reach: listed, not dropped
        entry.update(name=name, type="", quantiles=None)
        layers.append(entry)
    notes = []
    if flops is None:
        notes.append(
            "FLOPs are not counted: they need a Sequential or functional model with fixed input shapes."
        )
    return {
        "kind": "keras",
        "source": source,
        "layers": layers,
        "flops_available": flops is not None,
        "rules": ["uniform", "global"],
        "quantiles": QUANTILES,
        "notes": notes,
    }


# -- TFLite files ----------------------------------------------------------------------------------


def _tflite_data(path: str) -> dict:
    report = tflite_sparsity_report(path)
    layers = []
    for row in report.rows:
        prunable = len(row.shape) >= 2
        encoding = (
            row.encoding if row.stored in (None, row.size) else f"{row.encoding}, {row.stored:,} stored"
        )
        layers.append(
            {
                "name": row.layer,
                "type": f"{row.dtype} {'x'.join(map(str, row.shape))} ({encoding})",
                "params": row.size,
                "nonzero": row.nonzeros,
                "prunable": row.size if prunable else 0,
                "prunable_nonzero": row.nonzeros if prunable else 0,
                "quantiles": None,
            }
        )
    return {
        "kind": "tflite",
        "source": os.path.basename(path),
        "layers": layers,
        "flops_available": False,
        "rules": ["uniform"],
        "quantiles": QUANTILES,
        "notes": [
            report.title,
            "Rows are the file's constant weight tensors; tensors of rank 2 and more count as prunable. "
            "A TFLite file keeps no layer graph to count FLOPs from.",
        ],
    }


# -- scans and graphs, duck-typed ------------------------------------------------------------------


def _scan_data(scan, names: set[str]) -> dict:
    results = scan if isinstance(scan, Mapping) else getattr(scan, "results", None)
    metric = "metric" if isinstance(scan, Mapping) else str(getattr(scan, "metric", "metric"))
    if not isinstance(results, Mapping) or not results:
        raise ValueError(
            "Argument `scan` must be a sensitivity scan with `results` ({layer name: {sparsity: metric}}) "
            f"and `metric`, or that dict of results. Received: scan={scan!r}"
        )
    curves = {}
    for layer, points in results.items():
        if layer not in names:
            raise ValueError(
                f"Argument `scan` has results for layer '{layer}', which the model does not have; "
                f"its layers are {sorted(names)}. Scan the model the report is made for."
            )
        try:
            curve = sorted((float(s), float(m)) for s, m in dict(points).items())
        except (TypeError, ValueError):
            raise ValueError(
                f"Argument `scan`: the results of layer '{layer}' must map sparsities to metric values. "
                f"Received: {points!r}"
            ) from None
        if not curve or any(not 0.0 <= s <= 1.0 or not math.isfinite(m) for s, m in curve):
            raise ValueError(
                f"Argument `scan`: layer '{layer}' needs sparsities in [0, 1] with finite metric values. "
                f"Received: {points!r}"
            )
        curves[layer] = curve
    lower = any(word in metric.lower() for word in _LOWER_IS_BETTER)
    return {"metric": metric, "higher_is_better": not lower, "curves": curves}


def _graph_data(graph, names: set[str]) -> list[dict]:
    data = graph if isinstance(graph, Mapping) else getattr(graph, "to_dict", lambda: None)()
    groups = data.get("groups") if isinstance(data, Mapping) else None
    if not isinstance(groups, list):
        raise ValueError(
            'Argument `graph` must have `to_dict()` returning {"groups": [...]}, or be that dict. '
            f"Received: graph={graph!r}"
        )
    result = []
    for group in groups:
        try:
            members = [{"layer": str(m["layer"]), "kind": str(m["kind"])} for m in group["members"]]
            entry = {
                "index": int(group["index"]),
                "channels": int(group["channels"]),
                "prunable": bool(group["prunable"]),
                "members": members,
            }
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                'Argument `graph`: each group needs "index", "channels", "prunable" and "members" '
                f'([{{"layer", "kind"}}]). Received: {group!r}'
            ) from None
        unknown = [m["layer"] for m in members if m["layer"] not in names]
        if unknown:
            raise ValueError(
                f"Argument `graph`: group {entry['index']} names layers the model does not have: "
                f"{unknown}. Build the graph from the model the report is made for."
            )
        result.append(entry)
    return result


def _render(data: dict) -> str:
    # "</" or "<!--" inside a script element would end or confuse it; JSON reads \u003c as "<".
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return PAGE.replace("__TITLE__", html.escape(data["title"])).replace("__DATA__", payload)
