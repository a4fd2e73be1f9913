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
        self._sparsities: dict[str, float] | None = None  # None: the masks' state is not known yet
        self._last = None
        self._plan = None
        self._segments: dict[int, keras.Model] = {}

    def set_sparsities(self, sparsities: dict[str, float]) -> None:
        """Masks the named layers at their sparsities; every other layer goes back to dense."""
        # Only masks that change are written: a scan changes one layer at a time, and rewriting
        # every layer's masks each time costs as much as a forward pass of a small model.
        current = self._sparsities or {}
        for name, wrapper in self.wrappers.items():
            sparsity = float(sparsities.get(name, 0.0))
            if self._sparsities is not None and sparsity == current.get(name, 0.0):
                continue
            masks = mask_updates.layer_masks(wrapper, self._scores[name], sparsity) if sparsity else None
            for index, variable in enumerate(wrapper.masks):
                variable.assign(masks[index] if masks else ops.ones(variable.shape, dtype=variable.dtype))
        self._sparsities = {name: float(s) for name, s in sparsities.items() if s}

    def _features_from_last(self, cut: list) -> list | None:
        # The previous layer's cut usually determines this one (layers come in graph order): the
        # activations then come from the small part of the graph between the two cuts.
        if self._last is None:
            return None
        last_cut, last_features = self._last
        known = {id(tensor): array for tensor, array in zip(last_cut, last_features)}
        missing = [tensor for tensor in cut if id(tensor) not in known]
        if missing:
            try:
                step = keras.Model(inputs=last_cut, outputs=missing)
            except ValueError:  # not computable from the last cut alone
                return None
            computed = _run(step, last_features, self.batch_size, to_numpy=False)
            computed = computed if isinstance(computed, list) else [computed]
            known.update({id(tensor): array for tensor, array in zip(missing, computed)})
        return [known[id(tensor)] for tensor in cut]

    def predict(self) -> np.ndarray:
        """The copy's predictions on `x` under the current masks."""
        return _run(self.model, self.x, self.batch_size, compiled=True)

    def downstream_predictor(self, name: str) -> Callable[[], np.ndarray]:
        """A function predicting like `predict` while only layer `name`'s masks change.

        The tensors that feed the part of the graph from layer `name` to the outputs (its cut,
        see `downstream_cuts`) are computed once; each call then runs only that part, which shares
        the copy's layers and masks. That part runs as a chain of compiled pieces: from the cut to
        the first tensor after the layer that alone determines the outputs (the end of a residual
        block, say), then from each such tensor to the next. The pieces after a layer's own are
        shared by every layer before them, so each is compiled once per scan. Layers without a
        cut (of nested models, shared or multi-input layers) run the full copy.

        Example:

        ```python
        predict = masked.downstream_predictor("dense")
        masked.set_sparsities({"dense": 0.9})
        predictions = predict()
        ```
        """
        if self._plan is None:
            self._plan = _downstream_plan(self.model)
        cuts, first_anchors, anchors = self._plan
        cut = cuts.get(name)
        if not cut:
            return self.predict
        features = self._features_from_last(cut)
        if features is None:
            inputs = self.model.inputs
            upstream = keras.Model(inputs=inputs[0] if len(inputs) == 1 else inputs, outputs=cut)
            features = _run(upstream, self.x, self.batch_size, to_numpy=False)
            features = features if isinstance(features, list) else [features]
        self._last = (cut, features)
        outputs = self.model.outputs
        outputs = outputs[0] if len(outputs) == 1 else outputs
        first = first_anchors.get(name)
        chain = None
        if first is not None:
            try:
                own = keras.Model(inputs=cut, outputs=anchors[first])
                chain = [own, *(self._segment(i, anchors, outputs) for i in range(first, len(anchors)))]
            except ValueError:  # the anchor needs more than the cut: run the rest in one piece
                chain = None
        chain = chain or [keras.Model(inputs=cut, outputs=outputs)]

        def predict_downstream():
            values = features
            for piece in chain:
                values = _run(piece, values, self.batch_size, compiled=True, to_numpy=False)
            if isinstance(values, list):
                return [ops.convert_to_numpy(v) for v in values]
            return ops.convert_to_numpy(values)

        return predict_downstream

    def _segment(self, index: int, anchors: list, outputs) -> keras.Model:
        # The graph from one anchor to the next (or to the outputs), built and compiled once.
        if index not in self._segments:
            end = anchors[index + 1] if index + 1 < len(anchors) else outputs
            self._segments[index] = keras.Model(inputs=anchors[index], outputs=end)
        return self._segments[index]


def _run(model: keras.Model, x, batch_size: int, compiled: bool = False, to_numpy: bool = True):
    # Batch by batch rather than through `predict` (no callbacks, no progress, no dataset). With
    # `compiled`, each batch goes through the model's compiled prediction (`_compiled_call`: on
    # TensorFlow a graph function traced on the first call, then reused while only variables such
    # as masks change); without, the model is called eagerly, which is cheaper for a model run once. `x` is an array or a list
    # of arrays (or backend tensors), passed in that structure; the outputs come back in the
    # structure the model returns (an array, or a list of arrays), as backend tensors without
    # `to_numpy`.
    count = int(_first(x).shape[0])
    batches = []
    for start in range(0, count, batch_size):
        chunk = x
        if count > batch_size:
            end = start + batch_size
            chunk = [a[start:end] for a in x] if isinstance(x, list) else x[start:end]
        batches.append(_compiled_call(model, chunk) if compiled else model(chunk, training=False))
    several = isinstance(batches[0], (list, tuple))
    outputs = [list(b) for b in batches] if several else [[b] for b in batches]
    joined = [o[0] if len(batches) == 1 else ops.concatenate(list(o), axis=0) for o in zip(*outputs)]
    if to_numpy:
        joined = [ops.convert_to_numpy(o) for o in joined]
    return joined if several else joined[0]


def _compiled_call(model: keras.Model, x):
    # `predict_on_batch` without its conversion of the outputs to numpy: between the pieces of a
    # scan's chain, activations stay backend tensors, since copying them to numpy and back costs
    # more than running the smaller pieces. `make_predict_function` is public, but how its result
    # is called is each trainer's own: the TensorFlow and PyTorch trainers take `[(x,)]` (as their
    # `predict_on_batch` does). On JAX the model runs op by op instead: XLA fuses operations
    # across what are the pieces' boundaries in the whole model, so compiled pieces would differ
    # from the whole model in the last bits.
    if keras.backend.backend() in ("tensorflow", "torch"):
        model.make_predict_function()
        return model.predict_function([(x,)])
    return model(x, training=False)


def _first(x):
    return x[0] if isinstance(x, list) else x


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    return history.operation._inbound_nodes[history.node_index]


def _graph_nodes(model: keras.Model) -> list:
    # Every node of the model's own functional graph, each after the nodes it reads from.
    order, done, stack = [], set(), [(n, False) for n in map(_producer, model.outputs) if n is not None]
    while stack:
        node, parents_done = stack.pop()
        if id(node) in done:
            continue
        if parents_done:
            done.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((parent, False) for parent in node.parent_nodes if id(parent) not in done)
    return order


def _determines_outputs(tensor, outputs: list) -> bool:
    # Whether the outputs can be computed from `tensor` alone: walking back from them never
    # reaches a model input (or any other node that reads no tensor) without passing `tensor`.
    stack, seen = list(outputs), set()
    while stack:
        current = stack.pop()
        if current is tensor or id(current) in seen:
            continue
        seen.add(id(current))
        node = _producer(current)
        if node is None or not node.input_tensors:
            return False
        stack.extend(node.input_tensors)
    return True


def _anchors(model: keras.Model, nodes: list) -> list:
    """The tensors of `model`'s graph that alone determine its outputs, first to last.

    Inputs and outputs excepted: the ends of residual blocks, say, not their insides. Every path
    from the inputs to the outputs passes through each of them, so they follow one another.
    """
    outputs = list(model.outputs)
    ends = {id(t) for t in outputs}
    return [
        tensor
        for node in nodes
        if node.input_tensors
        for tensor in node.outputs
        if id(tensor) not in ends and _determines_outputs(tensor, outputs)
    ]


def _downstream_plan(model: keras.Model) -> tuple[dict[str, list], dict[str, int], list]:
    # `(cuts, {layer name: index of the first anchor that depends on the layer}, anchors)`.
    if not isinstance(getattr(model, "outputs", None), list) or not model.outputs:
        return {}, {}, []
    nodes = _graph_nodes(model)
    anchors = _anchors(model, nodes)
    children: dict[int, list] = {}
    for node in nodes:
        for parent in node.parent_nodes:
            children.setdefault(id(parent), []).append(node)
    calls: dict[int, list] = {}
    for node in nodes:
        calls.setdefault(id(node.operation), []).append(node)
    cuts, first_anchors = {}, {}
    for wrapper in mask_updates.collect_wrappers(model):
        own = calls.get(id(wrapper), [])
        if len(own) != 1 or len(own[0].input_tensors) != 1:
            continue
        start = own[0]
        depends, stack = set(), [start]
        while stack:
            node = stack.pop()
            if id(node) not in depends:
                depends.add(id(node))
                stack.extend(children.get(id(node), []))
        if not all(id(_producer(t)) in depends for t in model.outputs):
            continue
        cut, seen = [], set()
        for node in [start, *(n for n in nodes if id(n) in depends and n is not start)]:
            for tensor in node.input_tensors:
                producer = _producer(tensor)
                if (node is start or producer is None or id(producer) not in depends) and id(
                    tensor
                ) not in seen:
                    seen.add(id(tensor))
                    cut.append(tensor)
        cuts[wrapper.layer.name] = cut
        first = next((i for i, a in enumerate(anchors) if id(_producer(a)) in depends), None)
        if first is not None:
            first_anchors[wrapper.layer.name] = first
    # Only the anchors where some layer's own piece ends split the chain: each split costs a call.
    used = sorted(set(first_anchors.values()))
    position = {index: rank for rank, index in enumerate(used)}
    return cuts, {name: position[i] for name, i in first_anchors.items()}, [anchors[i] for i in used]


def downstream_cuts(model: keras.Model) -> dict[str, list]:
    """`{wrapped layer name: the tensors that, with it, determine the outputs}` for a pruned model.

    For each `PruneLowMagnitude` called once, on one input, in `model`'s own functional graph, the
    cut is the layer's input followed by every other tensor that a node depending on the layer
    reads and that does not itself depend on the layer (for example the shortcut of a residual
    block). Layers of nested models, shared layers and multi-input layers get no cut; neither do
    layers that some output does not depend on.

    Example:

    ```python
    cuts = downstream_cuts(masked.model)  # {"dense": [<KerasTensor ...>], ...}
    ```
    """
    return _downstream_plan(model)[0]


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
            the graph after it for each sparsity (same results, faster), as a chain of compiled
            pieces that layers share (see `MaskedCopy.downstream_predictor`); False runs the full
            (compiled) model for every measurement. Layers of nested models, shared and
            multi-input layers always run the full model.
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
    for layer_name, wrapper in wrappers.items():
        results[layer_name] = {}
        sizes[layer_name] = int(sum(np.prod(w.shape) for w in wrapper.pruned_weights))
        masked.set_sparsities({})
        predict = masked.downstream_predictor(layer_name) if downstream_only else masked.predict
        for sparsity in sparsities:
            masked.set_sparsities({layer_name: sparsity})
            results[layer_name][sparsity] = metric_fn(y, predict())
            progress.add(1)
    masked.set_sparsities({})
    return SensitivityScan(results, name, baseline, higher_is_better, sizes, criterion)
