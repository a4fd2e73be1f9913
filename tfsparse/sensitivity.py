"""Sensitivity scan: how much a model's metric suffers when each layer alone is pruned.

Every prunable layer is pruned one-shot to each of a few sparsities, one layer at a time and with no
retraining, and the metric is measured on held-out data. The result, a `SensitivityScan`, says which
layers can take high sparsity and which cannot; `tfsparse.auto_sparsity` turns it into per-layer
sparsities. Masks are set on a pruned copy of the model and restored between measurements, so the
model is compiled for prediction once and the model passed in is never changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

from tfsparse import _files, criteria, mask_updates
from tfsparse.calibration import Calibration, resolve_loss
from tfsparse.prune import prune_low_magnitude
from tfsparse.schedules import ConstantSparsity

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclasses.dataclass
class SensitivityScan:
    """The metric of a model with each layer alone pruned to each sparsity.

    Attributes:
        results: `{layer name: {sparsity: metric}}`, layer names as in the model passed to the
            scan (not the pruning wrappers' names), sparsities in increasing order.
        metric: the metric's name ("accuracy", "loss", or a callable's name).
        baseline: the metric of the unpruned model on the same data.
        higher_is_better: whether a larger metric is better (accuracy) or worse (loss).
        sizes: `{layer name: number of prunable weights}`, to weigh layers by their size.
        criterion: the criterion the layers were pruned with.

    `print(scan)` shows a table; `scan.plot("scan.png")` draws one curve per layer;
    `scan.save("scan.json")` and `SensitivityScan.load("scan.json")` keep it.

    Example:

    ```python
    scan = tfsparse.sensitivity_scan(model, (x_val, y_val), sparsities=(0.5, 0.9))
    print(scan)
    scan.results["dense"][0.9]  # accuracy with only layer 'dense' at 90% sparsity
    ```
    """

    results: dict[str, dict[float, float]]
    metric: str
    baseline: float
    higher_is_better: bool = True
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    criterion: str = "magnitude"

    def drops(self) -> dict[str, dict[float, float]]:
        """`{layer name: {sparsity: how much worse than the baseline}}`; positive is worse.

        Example:

        ```python
        scan.drops()["dense"][0.9]  # 0.013: accuracy 1.3 points below the dense model
        ```
        """
        sign = 1.0 if self.higher_is_better else -1.0
        return {
            name: {s: sign * (self.baseline - value) for s, value in by_sparsity.items()}
            for name, by_sparsity in self.results.items()
        }

    def __str__(self) -> str:
        sparsities = sorted({s for by_sparsity in self.results.values() for s in by_sparsity})
        width = max([len("layer"), *(len(name) for name in self.results)])
        header = f"{'layer':<{width}}  {'weights':>9}" + "".join(f"{f'{s:.0%}':>9}" for s in sparsities)
        lines = [
            f"Sensitivity scan: {self.metric} with one layer pruned ({self.criterion}, no retraining); "
            f"unpruned: {self.baseline:.4f}",
            header,
            "-" * len(header),
        ]
        for name, by_sparsity in self.results.items():
            cells = "".join(f"{by_sparsity[s]:>9.4f}" if s in by_sparsity else f"{'':>9}" for s in sparsities)
            lines.append(f"{name:<{width}}  {self.sizes.get(name, 0):>9,}{cells}")
        return "\n".join(lines)

    def to_json(self) -> str:
        """The scan as JSON text (sparsities as string keys); `from_json` reads it back.

        Example:

        ```python
        same = tfsparse.SensitivityScan.from_json(scan.to_json())
        ```
        """
        content = dataclasses.asdict(self)
        content["results"] = {
            name: {repr(float(s)): float(v) for s, v in by_sparsity.items()}
            for name, by_sparsity in self.results.items()
        }
        return json.dumps(content, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityScan:
        """A scan from the text `to_json` wrote.

        Example:

        ```python
        scan = tfsparse.SensitivityScan.from_json(open("scan.json").read())
        ```
        """
        try:
            content = json.loads(text)
            content["results"] = {
                name: {float(s): float(v) for s, v in by_sparsity.items()}
                for name, by_sparsity in content["results"].items()
            }
            return cls(**content)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"The text is not a sensitivity scan written by `SensitivityScan.to_json` ({error})."
            ) from None

    def save(self, path: str, force: bool = False) -> str:
        """Writes the scan as JSON to `path` atomically; an existing file is kept unless `force`.

        Returns:
            `path`.

        Example:

        ```python
        scan.save("scan.json")
        ```
        """
        _files.check_output_argument(path, force, suffixes=(".json",), overwrite_argument="force")
        text = self.to_json()

        def write(temporary):
            with open(temporary, "w", encoding="utf-8") as file:
                file.write(text)

        _files.write_atomically(path, write)
        return path

    @classmethod
    def load(cls, path: str) -> SensitivityScan:
        """Reads a scan that `save` wrote.

        Example:

        ```python
        scan = tfsparse.SensitivityScan.load("scan.json")
        ```
        """
        if not os.path.isfile(path):
            raise ValueError(
                f"Argument `path` must be a JSON file written by `scan.save`. Received: path={path!r}"
            )
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())

    def plot(self, path: str, force: bool = False) -> str:
        """Draws the metric against sparsity, one curve per layer, into a PNG file (atomically).

        Needs matplotlib (`pip install matplotlib`).

        Returns:
            `path`.

        Example:

        ```python
        scan.plot("sensitivity.png")
        ```
        """
        _files.check_output_argument(path, force, suffixes=(".png",), overwrite_argument="force")
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ValueError(
                "Plotting a sensitivity scan needs matplotlib: `pip install matplotlib`."
            ) from None
        figure = Figure(figsize=(7, 4.5))
        axis = figure.subplots()
        axis.axhline(self.baseline, color="black", linestyle="--", label="unpruned")
        for name, by_sparsity in self.results.items():
            sparsities = sorted(by_sparsity)
            axis.plot([s * 100 for s in sparsities], [by_sparsity[s] for s in sparsities], "o-", label=name)
        axis.set_xlabel("sparsity of the one pruned layer (%)")
        axis.set_ylabel(self.metric)
        axis.set_title(f"Sensitivity scan ({self.criterion}, no retraining)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=max(1, len(self.results) // 12))
        figure.tight_layout()
        _files.write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=110))
        return path


def check_data(data) -> tuple[np.ndarray, np.ndarray]:
    """`(x, y)` from held-out `data`, or a `ValueError` saying what the scan needs."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(d, "shape") for d in data)):
        raise ValueError(
            f"Argument `data` must be held-out arrays `(x, y)`. Received: data of type {type(data).__name__}"
        )
    x, y = data
    if int(x.shape[0]) == 0 or int(x.shape[0]) != int(y.shape[0]):
        raise ValueError(
            "Argument `data` must hold as many labels as inputs, at least one. "
            f"Received: {int(x.shape[0])} inputs and {int(y.shape[0])} labels."
        )
    return x, y


def _is_classifier(model: keras.Model, y) -> bool:
    # Several outputs per sample and labels that index them (integers, or one-hot rows).
    outputs = model.outputs[0].shape if getattr(model, "outputs", None) else None
    if outputs is None or len(outputs) != 2 or not outputs[-1] or outputs[-1] < 2:
        return False
    y = np.asarray(y)
    sparse = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
    return (sparse and np.all(np.equal(np.mod(y, 1), 0))) or (y.ndim == 2 and y.shape[1] == outputs[-1])


def _accuracy(y_true, y_pred) -> float:
    y_true = np.asarray(y_true)
    labels = y_true.argmax(axis=-1) if y_true.ndim == 2 and y_true.shape[1] > 1 else y_true.reshape(-1)
    return float(np.mean(np.argmax(y_pred, axis=-1) == labels))


def resolve_metric(model: keras.Model, y, metric) -> tuple[str, Callable, bool]:
    """`(name, metric_fn(y_true, y_pred) -> float, higher_is_better)` for a scan's `metric`.

    None picks "accuracy" for a classifier (several outputs, integer or one-hot labels), else
    "loss" (the loss `model` was compiled with). A callable is taken as higher-is-better.
    """
    if metric is None:
        metric = "accuracy" if _is_classifier(model, y) else "loss"
    if metric == "accuracy":
        return "accuracy", _accuracy, True
    if metric == "loss":
        loss_fn = resolve_loss(model)
        return (
            "loss",
            lambda y_true, y_pred: float(ops.convert_to_numpy(ops.mean(loss_fn(y_true, y_pred)))),
            False,
        )
    if callable(metric):
        return getattr(metric, "__name__", "metric"), lambda t, p: float(metric(t, p)), True
    raise ValueError(
        f"Argument `metric` must be 'accuracy', 'loss', a callable `metric(y_true, y_pred)` or None. "
        f"Received: metric={metric!r}"
    )


def _check_sparsities(sparsities: Sequence[float]) -> tuple[float, ...]:
    values = tuple(sorted({float(s) for s in sparsities}))
    if not values or not all(0.0 < s < 1.0 for s in values):
        raise ValueError(
            f"Argument `sparsities` must be values in (0, 1), at least one. Received: sparsities={sparsities}"
        )
    return values


class MaskedCopy:
    """A pruned copy of a model whose masks are set directly, to measure many pruning choices.

    Scores are computed once, on the unpruned model (with `data` for data criteria); setting
    sparsities changes only the masks (the wrappers compute with weight * mask), so the compiled
    prediction is reused for every choice and the weights stay dense.

    Args:
        model: the model to copy (not changed).
        data: `(x, y)` arrays: predicted on, and the calibration data of "wanda" and "taylor"
            unless `calibration_data` is given.
        criterion: "magnitude", "wanda" or "taylor".
        batch_size: the batch size of predictions and calibration.
        calibration_data: `(x, y)` arrays or batches to score "wanda" and "taylor" on instead of
            `data` (all of it is used).

    Example:

    ```python
    masked = MaskedCopy(model, (x_val, y_val))
    masked.set_sparsities({"dense": 0.9})
    predictions = masked.predict()
    ```
    """

    def __init__(
        self,
        model: keras.Model,
        data,
        criterion: str = "magnitude",
        batch_size: int = 256,
        calibration_data=None,
    ):
        scorer = criteria.get(criterion)
        if scorer.signed:
            raise ValueError(
                "Argument `criterion` must score weights from one model state: one of "
                f"['magnitude', 'taylor', 'wanda']. Received: criterion={criterion!r}"
            )
        self.x, y = data
        self.batch_size = batch_size
        self.model = prune_low_magnitude(
            model, pruning_schedule=ConstantSparsity(0.5, 0), criterion=criterion
        )
        wrappers = [w for w in mask_updates.collect_wrappers(self.model) if w.built]
        calibration = None
        if scorer.needs_calibration:
            loss = getattr(model, "loss", None)
            scored_on = (self.x, y) if calibration_data is None else calibration_data
            calibration = Calibration(self.model, scored_on, batches=None, batch_size=batch_size, loss=loss)
        inputs = mask_updates.criterion_inputs(wrappers, calibration)
        self.wrappers = {w.layer.name: w for w in wrappers}
        self._scores = {w.layer.name: mask_updates.layer_scores(w, inputs[id(w)]) for w in wrappers}

    def set_sparsities(self, sparsities: dict[str, float]) -> None:
        """Masks the named layers at their sparsities; every other layer goes back to dense."""
        for name, wrapper in self.wrappers.items():
            sparsity = sparsities.get(name, 0.0)
            masks = mask_updates.layer_masks(wrapper, self._scores[name], sparsity) if sparsity else None
            for index, variable in enumerate(wrapper.masks):
                variable.assign(masks[index] if masks else ops.ones(variable.shape, dtype=variable.dtype))

    def _features_from_last(self, cut: list) -> list | None:
        # The previous layer's cut usually determines this one (layers come in graph order): the
        # activations then come from the small part of the graph between the two cuts.
        if getattr(self, "_last", None) is None:
            return None
        last_cut, last_features = self._last
        known = {id(tensor): array for tensor, array in zip(last_cut, last_features)}
        missing = [tensor for tensor in cut if id(tensor) not in known]
        if missing:
            try:
                step = keras.Model(inputs=last_cut, outputs=missing)
            except ValueError:  # not computable from the last cut alone
                return None
            computed = _run(step, last_features, self.batch_size)
            computed = computed if isinstance(computed, list) else [computed]
            known.update({id(tensor): array for tensor, array in zip(missing, computed)})
        return [known[id(tensor)] for tensor in cut]

    def predict(self) -> np.ndarray:
        """The copy's predictions on `x` under the current masks."""
        return _run(self.model, self.x, self.batch_size)

    def downstream_predictor(self, name: str, cut: list | None = None) -> Callable[[], np.ndarray]:
        """A function predicting like `predict` while only layer `name`'s masks change.

        The tensors that feed the part of the graph from layer `name` to the outputs (`cut`, from
        `downstream_cuts`) are computed once; each call then runs only that part, which shares the
        copy's layers and masks. Without a cut (nested models, shared or multi-input layers) the
        full copy is run.

        Example:

        ```python
        predict = masked.downstream_predictor("dense", downstream_cuts(masked.model).get("dense"))
        ```
        """
        if not cut:
            return self.predict
        features = self._features_from_last(cut)
        if features is None:
            inputs = self.model.inputs
            upstream = keras.Model(inputs=inputs[0] if len(inputs) == 1 else inputs, outputs=cut)
            features = _run(upstream, self.x, self.batch_size)
            features = features if isinstance(features, list) else [features]
        self._last = (cut, features)
        outputs = self.model.outputs
        downstream = keras.Model(inputs=cut, outputs=outputs[0] if len(outputs) == 1 else outputs)
        return lambda: _run(downstream, features, self.batch_size)


def _run(model: keras.Model, x, batch_size: int):
    # Called batch by batch rather than through `predict`: a sub-model per layer would each be
    # traced anew, which costs more than it saves; every path of a scan computes this same way.
    # `x` is an array or a list of arrays, passed in that structure; the outputs come back in the
    # structure the model returns (an array, or a list of arrays).
    batches = []
    for start in range(0, int(_first(x).shape[0]), batch_size):
        chunk = (
            [a[start : start + batch_size] for a in x]
            if isinstance(x, list)
            else x[start : start + batch_size]
        )
        batches.append(model(chunk, training=False))
    if isinstance(batches[0], (list, tuple)):
        return [np.concatenate([ops.convert_to_numpy(b[i]) for b in batches]) for i in range(len(batches[0]))]
    return np.concatenate([ops.convert_to_numpy(b) for b in batches])


def _first(x):
    return x[0] if isinstance(x, list) else x


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    return history.operation._inbound_nodes[history.node_index]


def downstream_cuts(model: keras.Model) -> dict[str, list]:
    """`{wrapped layer name: the tensors that, with it, determine the outputs}` for a pruned model.

    For each `PruneLowMagnitude` called once, on one input, in `model`'s own functional graph, the
    cut is the layer's input followed by every other tensor that a node depending on the layer
    reads and that does not itself depend on the layer (for example the shortcut of a residual
    block). Layers of nested models, shared layers and multi-input layers get no cut; neither do
    layers that some output does not depend on.
    """
    if not isinstance(getattr(model, "outputs", None), list) or not model.outputs:
        return {}
    nodes, stack = {}, [n for n in map(_producer, model.outputs) if n is not None]
    while stack:  # every node of the model's graph, from the outputs back
        node = stack.pop()
        if id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(node.parent_nodes)
    calls: dict[int, list] = {}
    for node in nodes.values():
        calls.setdefault(id(node.operation), []).append(node)
    cuts = {}
    for wrapper in mask_updates.collect_wrappers(model):
        own = calls.get(id(wrapper), [])
        if len(own) != 1 or len(own[0].input_tensors) != 1:
            continue
        start = own[0]
        depends = {id(start)}
        changed = True
        while changed:
            changed = False
            for node in nodes.values():
                if id(node) not in depends and any(id(p) in depends for p in node.parent_nodes):
                    depends.add(id(node))
                    changed = True
        if not all(id(_producer(t)) in depends for t in model.outputs):
            continue
        cut, seen = [], set()
        for node in [start, *(n for n in nodes.values() if id(n) in depends and n is not start)]:
            for tensor in node.input_tensors:
                producer = _producer(tensor)
                if (node is start or producer is None or id(producer) not in depends) and id(
                    tensor
                ) not in seen:
                    seen.add(id(tensor))
                    cut.append(tensor)
        cuts[wrapper.layer.name] = cut
    return cuts


def sensitivity_scan(
    model: keras.Model,
    data,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    metric=None,
    criterion: str = "magnitude",
    layers: Sequence[str] | None = None,
    batch_size: int = 256,
    verbose: int = 1,
    downstream_only: bool = True,
    calibration_data=None,
) -> SensitivityScan:
    """Prunes each layer alone to each sparsity (one-shot) and measures the metric on held-out data.

    Args:
        model: a trained Sequential or functional model (not changed).
        data: held-out arrays `(x, y)`; data criteria ("wanda", "taylor") also calibrate on them.
        sparsities: the sparsities to try, each in (0, 1).
        metric: "accuracy", "loss" (the compiled loss), a callable `metric(y_true, y_pred)` where
            higher is better, or None: accuracy for classifiers, else the compiled loss.
        criterion: how weights are scored: "magnitude", "wanda" or "taylor".
        layers: names of the layers to scan; None scans every prunable layer.
        batch_size: the batch size of the predictions.
        verbose: 1 shows a Keras progress bar, 0 nothing.
        downstream_only: compute the activations feeding each layer once and run only the part of
            the graph after it for each sparsity (same results, faster); False runs the full model
            for every measurement. Layers of nested models, shared and multi-input layers always
            run the full model.
        calibration_data: what "wanda" and "taylor" score weights on, instead of `data`: `(x, y)`
            arrays or batches, typically a few hundred training samples. Scored and measured on
            the same samples, a data criterion keeps just the weights those samples need, and the
            scan then reports layers as more robust than they are on new data (in gradual pruning
            the criterion scores on training batches too).

    Returns:
        A `SensitivityScan`.

    Example:

    ```python
    scan = tfsparse.sensitivity_scan(model, (x_val, y_val))
    print(scan)
    scan.plot("sensitivity.png")
    ```
    """
    x, y = check_data(data)
    sparsities = _check_sparsities(sparsities)
    name, metric_fn, higher_is_better = resolve_metric(model, y, metric)
    masked = MaskedCopy(model, (x, y), criterion, batch_size, calibration_data)
    wrappers = masked.wrappers
    if layers is not None:
        unknown = sorted(set(layers) - set(wrappers))
        if unknown:
            raise ValueError(
                f"Argument `layers` names layers that are not prunable layers of model '{model.name}': "
                f"{unknown}. Prunable layers: {sorted(wrappers)}"
            )
        wrappers = {name: wrapper for name, wrapper in wrappers.items() if name in set(layers)}
    baseline = metric_fn(y, masked.predict())
    progress = keras.utils.Progbar(len(wrappers) * len(sparsities), verbose=verbose, unit_name="measurement")
    results, sizes = {}, {}
    cuts = downstream_cuts(masked.model) if downstream_only else {}
    for layer_name, wrapper in wrappers.items():
        results[layer_name] = {}
        sizes[layer_name] = int(sum(np.prod(w.shape) for w in wrapper.pruned_weights))
        masked.set_sparsities({})
        predict = masked.downstream_predictor(layer_name, cuts.get(layer_name))
        for sparsity in sparsities:
            masked.set_sparsities({layer_name: sparsity})
            results[layer_name][sparsity] = metric_fn(y, predict())
            progress.add(1)
    masked.set_sparsities({})
    return SensitivityScan(results, name, baseline, higher_is_better, sizes, criterion)
