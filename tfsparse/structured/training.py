"""Gradual structured pruning during `fit()`: channel groups masked on a schedule, then removed.

The model is wrapped as for unstructured pruning (`tfsparse.prune_low_magnitude` with a
`PolynomialDecay` or `ConstantSparsity` schedule), so the training step is the wrappers' one
multiply of each kernel by its mask. Only the callback differs: where `UpdatePruningStep` zeroes
single weights, `UpdateChannelMasks` zeroes whole channels of the model's `DependencyGraph`
groups, in every layer that reads or writes them. `finalize` then rebuilds the smaller model
with a core `Plan` that removes exactly the masked channels, so its outputs equal the masked
model's.
"""

from __future__ import annotations

import keras
import numpy as np

from tfsparse import regularizers
from tfsparse.analysis.latency import RUNTIMES
from tfsparse.callbacks import UpdatePruningStep
from tfsparse.mask_updates import collect_wrappers, sync_backend_state
from tfsparse.prune import prune_low_magnitude, strip_pruning
from tfsparse.schedules import PruningSchedule
from tfsparse.structured import importance as importance_module
from tfsparse.structured.graph import DependencyGraph
from tfsparse.structured.plan import Plan, _check_arguments, plan_for_graph
from tfsparse.structured.pruning import apply
from tfsparse.structured.speed import check_speedup
from tfsparse.wrapper import PruneLowMagnitude


def _wrappers_by_path(model: keras.Model, prefix: str = "") -> dict[str, PruneLowMagnitude]:
    """`{graph path: wrapper}`: a wrapper stands where its layer is in the stripped model."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, PruneLowMagnitude):
            found[f"{prefix}{layer.layer.name}"] = layer
        elif isinstance(layer, keras.Model):
            found.update(_wrappers_by_path(layer, f"{prefix}{layer.name}/"))
    return found


def _mask_probe(model: keras.Model, wrappers: dict[str, PruneLowMagnitude]) -> keras.Model:
    """The stripped model with each wrapped weight replaced by its mask and every other weight by 0.

    Its "l1" group scores count, per channel, the kernel entries still kept: 0 for a channel whose
    every kernel slice is masked. Only public graph and importance functions are needed for that.
    """
    from tfsparse.structured.surgery import leaf_layers

    probe = strip_pruning(model)
    for path, layer in leaf_layers(probe).items():
        wrapper = wrappers.get(path)
        masks = (
            {} if wrapper is None else {id(w): m for w, m in zip(wrapper.pruned_weights, wrapper.get_masks())}
        )
        inner = [] if wrapper is None else wrapper.layer.weights
        values = [np.zeros(tuple(w.shape), dtype="float32") for w in layer.weights]
        for index, weight in enumerate(inner):
            if id(weight) in masks:
                values[index] = masks[id(weight)].astype("float32")
        if values:
            layer.set_weights(values)
    return probe


def masked_channels(model: keras.Model, graph: DependencyGraph) -> dict[int, list[int]]:
    """`{group index: channels}` whose every kernel slice is masked in the wrapped `model`.

    Groups without a wrapped kernel (nothing to read a mask from) are left out, and so is a group
    whose every channel is masked (a group keeps at least one channel).
    """
    wrappers = _wrappers_by_path(model)
    scores = importance_module.group_scores(_mask_probe(model, wrappers), graph, "l1")
    removed = {}
    for index, values in scores.items():
        gone = np.flatnonzero((values == 0) & ~graph.groups[index].fixed)
        if len(gone) and len(gone) < graph.groups[index].channels and np.any(values > 0):
            removed[index] = gone.tolist()
    return removed


def channel_masks(graph: DependencyGraph, wrapper: PruneLowMagnitude, path: str, keep) -> list[np.ndarray]:
    """The masks of one wrapper's pruned weights that zero the removed channels of every group.

    `keep` is `graph.keep_function(removed)`; each weight axis the graph slices is masked where
    its channel is removed.
    """
    record = graph.layers.get(path)
    slices = record.slices if record is not None else []
    position = {id(weight): index for index, weight in enumerate(wrapper.layer.weights)}
    masks = []
    for weight in wrapper.pruned_weights:
        mask = np.ones(tuple(weight.shape), dtype="float32")
        for s in slices:
            if s.index == position[id(weight)]:
                shape = [1] * mask.ndim
                shape[s.axis] = mask.shape[s.axis]
                mask = mask * keep(s.atoms).astype("float32").reshape(shape)
        masks.append(mask)
    return masks


@keras.saving.register_keras_serializable(package="tfsparse")
class ChannelGroupLasso(regularizers.GroupLasso):
    """`GroupLasso` over both channel axes of a kernel at once: its input rows and output columns.

    `prune_gradually` gives each pruned layer the axes its channels are removed along in the
    model's `DependencyGraph`, so that a channel is driven to zero in the layer that writes it and
    in every layer that reads it.

    Args:
        strength: a number >= 0 or a schedule of the pruning step.
        groups: a list of "rows" and/or "columns".

    Example:

    ```python
    regularizer = ChannelGroupLasso(1e-4, groups=["rows", "columns"])
    ```
    """

    def __init__(self, strength=1e-4, groups=("rows", "columns")):
        groups = [groups] if isinstance(groups, str) else list(groups)
        if not groups or any(g not in ("rows", "columns") for g in groups):
            raise ValueError(
                f'Argument `groups` must list "rows" and/or "columns". Received: groups={groups!r}'
            )
        super().__init__(strength, groups=groups[0])
        self.groups = groups

    def penalty(self, weight):
        return sum(regularizers.GroupLasso(1.0, groups=g).penalty(weight) for g in self.groups)

    def get_config(self) -> dict:
        return {**super().get_config(), "groups": list(self.groups)}


def _channel_axes(graph: DependencyGraph, wrapper: PruneLowMagnitude, path: str) -> list[str]:
    """ "rows" and/or "columns": which of axes -2 and -1 of the wrapper's kernels hold channels of
    a prunable group (model inputs and outputs are never pruned, so never penalized)."""
    ranks = {w.name: len(w.shape) for w in wrapper.pruned_weights}
    found = set()
    for group in graph.groups:
        if not group.prunable:
            continue
        for member in group.members:
            if member.layer != path:
                continue
            for name, axis, _ in member.weights:
                rank = ranks.get(name, 0)
                if rank >= 2 and axis % rank == rank - 2:
                    found.add("rows")
                elif rank >= 2 and axis % rank == rank - 1:
                    found.add("columns")
    return [g for g in ("rows", "columns") if g in found]


def prune_gradually(
    model: keras.Model, pruning_schedule: PruningSchedule, group_lasso=None, ignored_layers=()
) -> keras.Model:
    """Wraps `model` for gradual structured pruning: fit it with `UpdateChannelMasks`, then `finalize`.

    This is `tfsparse.prune_low_magnitude(model, pruning_schedule)` (the schedule's sparsity is
    read as the share of each channel group to mask), plus, with `group_lasso`, a
    `ChannelGroupLasso` on each pruned kernel along the axes its channels are removed along in the
    model's `DependencyGraph`: rows for the channels a layer reads, columns for those it writes.
    The penalty pulls whole channels toward zero, so the channels the schedule then masks carry
    little.

    Args:
        model: a Sequential or functional model.
        pruning_schedule: a `tfsparse.PolynomialDecay`, `ConstantSparsity` or other schedule.
        group_lasso: None, or the penalty's strength: a number >= 0 or a schedule of the pruning
            step (`tfsparse.regularizers.RampSchedule`).
        ignored_layers: layers whose channels stay whole (pass the same to `UpdateChannelMasks`
            and `finalize`).

    Returns:
        The wrapped model.

    Example:

    ```python
    pruned = prune_gradually(model, tfsparse.PolynomialDecay(0.0, 0.5, 0, 1000), group_lasso=1e-4)
    pruned.compile(...)
    pruned.fit(x, y, epochs=4, callbacks=[UpdateChannelMasks()])
    small = finalize(pruned)
    ```
    """
    graph = DependencyGraph(model, ignored_layers=ignored_layers)
    pruned = prune_low_magnitude(model, pruning_schedule=pruning_schedule)
    if group_lasso is not None:
        for path, wrapper in _wrappers_by_path(pruned).items():
            axes = _channel_axes(graph, wrapper, path)
            if axes:
                wrapper.regularizer = ChannelGroupLasso(group_lasso, groups=axes)
    return pruned


class UpdateChannelMasks(UpdatePruningStep):
    """Masks whole channel groups of a wrapped model as its pruning schedules say, during `fit()`.

    Use it instead of `UpdatePruningStep` on a model from `tfsparse.prune_low_magnitude`: when a
    layer's schedule prunes at a step, each channel group of the model's `DependencyGraph` loses its
    least important channels (the schedule's sparsity is the share of a group's channels, as
    `ratio` in `tfsparse.structured.prune`), in every kernel that writes or reads them. Masked
    channels stay masked. Everything else (the step kept in each layer, resuming from a saved
    model, refusing a fit without the callback) is `UpdatePruningStep`'s. Then
    `tfsparse.structured.finalize` removes the masked channels.

    Args:
        importance: how channels are ranked: "l1", "l2", "bn_scale", "taylor" (needs `data`),
            "lamp", "random" or a callable, as in `tfsparse.structured.prune`.
        scope: "layer" (each group at the schedule's sparsity) or "global" (channels of all groups
            ranked together).
        ignored_layers: layers whose channels are never masked (pass the same to `finalize`).
        round_to: keep channel counts at multiples of this.
        max_ratio: no group loses more than this share of its channels.
        data: `(x, y)` for importance "taylor".

    Example:

    ```python
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=tfsparse.PolynomialDecay(0, 0.5, 0, 500))
    pruned.compile(...)
    pruned.fit(x, y, epochs=4, callbacks=[tfsparse.structured.UpdateChannelMasks(round_to=8)])
    small = tfsparse.structured.finalize(pruned)
    ```
    """

    def __init__(
        self,
        importance="l2",
        scope: str = "layer",
        ignored_layers=(),
        round_to: int = 1,
        max_ratio: float = 0.9,
        data=None,
    ):
        super().__init__()
        _check_arguments(0.0, scope, round_to, max_ratio)
        importance_module.check_importance(importance)
        self.importance = importance
        self.scope = scope
        self.ignored_layers = tuple([ignored_layers] if isinstance(ignored_layers, str) else ignored_layers)
        self.round_to = round_to
        self.max_ratio = max_ratio
        self.data = data
        self._graph = None
        self._paths: dict[str, PruneLowMagnitude] = {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._paths = _wrappers_by_path(self.model)
        if not self._paths:
            return
        self._graph = DependencyGraph(strip_pruning(self.model), ignored_layers=self.ignored_layers)

    def on_train_batch_begin(self, batch, logs=None):
        due = {path: w.pruning_schedule(self._step) for path, w in self._paths.items()}
        due = {path: sparsity for path, (should_prune, sparsity) in due.items() if should_prune}
        if due:
            sync_backend_state(self.model)
            self.update_masks(due)
        self._step += 1

    def update_masks(self, sparsity: dict[str, float]) -> dict[int, list[int]]:
        """Masks the least important channels now; `sparsity` is `{layer path: share of channels}`.

        A group takes the smallest sparsity among its wrapped layers (with scope "global", the
        largest one applies to all). Channels masked before stay masked.

        Returns:
            `{group index: masked channels}`.
        """
        graph = self._graph
        before = masked_channels(self.model, graph)
        plain = strip_pruning(self.model)
        scores = importance_module.group_scores(plain, graph, self.importance, data=self.data)
        if len(scores) < sum(group.prunable for group in graph.groups):
            # "bn_scale" scores only groups with a normalization layer; the others are ranked by l2.
            scores = {**importance_module.group_scores(plain, graph, "l2"), **scores}
        for index, channels in before.items():
            if index in scores:
                scores[index] = scores[index].copy()
                scores[index][channels] = -np.inf  # masked before: the first to go again

        def ranked(model, group):
            return scores[group.index]

        ratio = max(sparsity.values()) if self.scope == "global" else sparsity
        plan = plan_for_graph(
            plain, graph, ratio, ranked, self.scope, self.round_to, self.max_ratio, self.data
        )
        removed = {
            g: sorted(set(plan.removed.get(g, [])) | set(before.get(g, [])))
            for g in set(plan.removed) | set(before)
        }
        keep = graph.keep_function(removed)
        for path, wrapper in self._paths.items():
            if wrapper.built:
                wrapper.set_masks(channel_masks(graph, wrapper, path, keep))
        return removed


def finalize(
    model: keras.Model, ignored_layers=(), tolerance: float = 0.0, speed_check: str | None = "keras"
) -> keras.Model:
    """The smaller model: removes the channels that carry nothing, rebuilding through a core `Plan`.

    For a model wrapped for pruning (trained with `UpdateChannelMasks`), the removed channels are
    those whose every kernel slice is masked; the result's outputs equal the masked model's
    (up to float rounding; layers that normalize across channels, LayerNormalization and
    GroupNormalization, see fewer channels and are the exception). Also removed, in wrapped and
    plain models: channels whose l2 norm over all their group's weights is at most `tolerance`
    times the largest of their group (with 0, in a plain model: channels that are exactly zero).
    That is how channels a group lasso (`prune_gradually(..., group_lasso=...)`) drove to near
    zero are removed; their outputs then change by about what the removed weights carried.

    Args:
        model: a model from `tfsparse.prune_low_magnitude` trained with `UpdateChannelMasks`,
            or a plain Sequential or functional model.
        ignored_layers: the `ignored_layers` the masks were made with.
        tolerance: for plain models, the share of the group's largest channel norm at or below
            which a channel counts as zero, in [0, 1).
        speed_check: measure both models in this runtime ("keras" or "litert") and warn when the
            speedup is less than half the FLOP reduction (`tfsparse.structured.speed.check_speedup`);
            None to skip.

    Returns:
        An ordinary Keras model with fewer channels, the same inputs, outputs and layer names.

    Example:

    ```python
    small = tfsparse.structured.finalize(pruned)
    small.save("small.keras")
    ```
    """
    if speed_check not in (None, *RUNTIMES):
        raise ValueError(
            f"Argument `speed_check` must be None or one of {RUNTIMES}. Received: speed_check={speed_check!r}"
        )
    if not isinstance(tolerance, (int, float)) or not 0.0 <= tolerance < 1.0:
        raise ValueError(f"Argument `tolerance` must be in [0, 1). Received: tolerance={tolerance!r}")
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `model` must be a Keras model. Received: model={model!r} of type {type(model).__name__}"
        )
    wrapped = bool(collect_wrappers(model))
    if wrapped:
        sync_backend_state(model)
    plain = strip_pruning(model) if wrapped else model
    graph = DependencyGraph(plain, ignored_layers=ignored_layers)
    masked = masked_channels(model, graph) if wrapped else {}
    small_norms = {}
    if not wrapped or tolerance > 0:
        for index, norms in importance_module.group_scores(plain, graph, "l2").items():
            gone = np.flatnonzero((norms <= tolerance * norms.max()) & ~graph.groups[index].fixed)
            if len(gone):
                small_norms[index] = gone.tolist()
    removed, reasons = {}, {}
    for index in sorted(set(masked) | set(small_norms)):
        channels = sorted(set(masked.get(index, [])) | set(small_norms.get(index, [])))
        if len(channels) >= graph.groups[index].channels:
            channels = masked.get(index, [])  # a group keeps at least one channel
        if channels:
            removed[index] = channels
            reasons[index] = (
                f"{len(masked.get(index, []))} masked during training, {len(small_norms.get(index, []))} with "
                f"an l2 norm at most {tolerance:g} of the group's largest; {len(channels)} of "
                f"{graph.groups[index].channels} removed"
            )
    groups = {
        g: {"channels": graph.groups[g].channels, "layers": graph.groups[g].layers()[:4]} for g in removed
    }
    small = apply(plain, Plan(removed, reasons, graph.ignored_layers, groups))
    if speed_check is not None and removed:
        check_speedup(plain, small, runtime=speed_check)
    return small
