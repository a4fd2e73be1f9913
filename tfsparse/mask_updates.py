"""Recomputing the masks of a model's pruning wrappers: schedule -> scores -> masks -> variables.

This is the host-side step that `UpdatePruningStep` runs when a schedule says to prune, and that
one-shot pruning runs once. It reads the weights and whatever else each wrapper's criterion needs
(gradients or input norms measured on calibration data, movement scores kept by the wrapper),
scores them, turns scores into masks per layer or with one global threshold (optionally on LAMP-
normalized scores, with a minimum density per layer), and writes masks and masked weights back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable

import keras
import numpy as np
from keras import ops

from tfsparse import criteria, device_masking, masking, regrowth
from tfsparse.wrapper import PruneLowMagnitude

_INPUT_AXIS_LAST = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)


def collect_wrappers(model: keras.layers.Layer) -> list[PruneLowMagnitude]:
    """Every `PruneLowMagnitude` in `model`, nested models included, each once, in layer order.

    Example:

    ```python
    wrappers = collect_wrappers(tfsparse.prune_low_magnitude(model))
    ```
    """
    found: dict[int, PruneLowMagnitude] = {}

    def visit(layer):
        if isinstance(layer, PruneLowMagnitude):
            found.setdefault(id(layer), layer)
        for child in getattr(layer, "layers", ()):
            visit(child)

    visit(model)
    return list(found.values())


def sync_backend_state(model: keras.Model | None) -> None:
    """Brings variables up to date with the training state before the host reads or writes them.

    On the JAX backend `fit()` keeps the state outside the variables during an epoch; syncing puts
    it back and makes the next step read the variables again, so host-side mask updates are seen.
    The other backends train the variables in place and need nothing.
    """
    sync = getattr(model, "jax_state_sync", None)
    if callable(sync):
        sync()


def input_axis(layer: keras.layers.Layer) -> int:
    """The axis of a layer's kernel that runs over its input features (m:n groups, Wanda norms)."""
    return -1 if isinstance(layer, _INPUT_AXIS_LAST) else -2


def _input_norm_for(wrapper: PruneLowMagnitude, norm: np.ndarray | None) -> list[np.ndarray | None]:
    # Wanda needs the kernel's input axis to line up with the layer's input features; layers with
    # several pruned weights (recurrent, attention) or other inputs (embeddings) get None.
    weights = wrapper.pruned_weights
    if norm is None or len(weights) != 1 or len(weights[0].shape) < 2:
        return [None] * len(weights)
    axis = input_axis(wrapper.layer)
    shape = [1] * len(weights[0].shape)
    if weights[0].shape[axis] != norm.size:
        return [None]
    shape[axis] = norm.size
    return [norm.reshape(shape)]


def criterion_inputs(wrappers: list[PruneLowMagnitude], calibration) -> dict[int, list[dict]]:
    """For each wrapper (by id), per pruned weight, the inputs its criterion takes besides the weight.

    Example:

    ```python
    inputs = criterion_inputs(wrappers, calibration)  # {id(wrapper): [{"gradient": ...}], ...}
    ```
    """
    needs = {id(w): criteria.get(w.criterion).inputs for w in wrappers}
    wanting_data = [w for w in wrappers if criteria.get(w.criterion).needs_calibration]
    if wanting_data and calibration is None:
        raise ValueError(
            f"Layer '{wanting_data[0].name}' is pruned with criterion {wanting_data[0].criterion!r}, "
            "which scores weights on data run through the model. Pass "
            "`tfsparse.UpdatePruningStep(calibration_data=(x, y))` (a few batches of training data)."
        )
    gradient_weights = [v for w in wrappers if "gradient" in needs[id(w)] for v in w.pruned_weights]
    gradients = iter(calibration.gradient_magnitudes(gradient_weights) if gradient_weights else ())
    _accumulate_movement([w for w in wrappers if "accumulated_score" in needs[id(w)]], calibration)
    norm_wrappers = [w for w in wrappers if "input_norm" in needs[id(w)]]
    norms = calibration.input_norms(norm_wrappers) if norm_wrappers else {}
    inputs = {}
    for wrapper in wrappers:
        per_weight = [{} for _ in wrapper.pruned_weights]
        if "gradient" in needs[id(wrapper)]:
            for weight_inputs in per_weight:
                weight_inputs["gradient"] = next(gradients)
        if "input_norm" in needs[id(wrapper)]:
            for weight_inputs, norm in zip(per_weight, _input_norm_for(wrapper, norms.get(id(wrapper)))):
                weight_inputs["input_norm"] = norm
        if "accumulated_score" in needs[id(wrapper)]:
            for weight_inputs, score in zip(per_weight, wrapper.get_movement_scores()):
                weight_inputs["accumulated_score"] = score
        inputs[id(wrapper)] = per_weight
    return inputs


def _accumulate_movement(wrappers: list[PruneLowMagnitude], calibration) -> None:
    # Straight-through (Sanh et al.): the gradient with respect to the masked weight, pruned
    # positions included. The stored weights are made exactly the masked ones (momentum may have
    # moved pruned ones), so with every mask at one the model computes the same outputs while the
    # gradient reaches every position.
    if not wrappers:
        return
    saved = []
    for wrapper in wrappers:
        wrapper.set_masks([mask.value for mask in wrapper.masks])
        saved.append([ops.copy(mask.value) for mask in wrapper.masks])
        for mask in wrapper.masks:
            mask.assign(ops.ones_like(mask.value))
    try:
        sums = iter(calibration.gradient_sums([v for w in wrappers for v in w.pruned_weights]))
    finally:
        for wrapper, masks in zip(wrappers, saved):
            for mask, value in zip(wrapper.masks, masks):
                mask.assign(value)
    for wrapper in wrappers:
        wrapper.accumulate_movement([next(sums) for _ in wrapper.pruned_weights])


def layer_scores(wrapper: PruneLowMagnitude, inputs: list[dict] | None = None) -> list[np.ndarray]:
    """The scores of a wrapper's pruned weights under its criterion; pruned weights score -inf,
    except under straight-through criteria ("movement"), whose pruned weights may come back.

    Example:

    ```python
    scores = layer_scores(wrapper, criterion_inputs([wrapper], None)[id(wrapper)])
    ```
    """
    score = criteria.get(wrapper.criterion)
    inputs = inputs if inputs is not None else [{} for _ in wrapper.pruned_weights]
    scores = []
    for value, mask, weight_inputs in zip(wrapper.get_pruned_weight_values(), wrapper.get_masks(), inputs):
        # Weights already pruned score from their masked value and below every kept weight, so a
        # pruned weight stays pruned whatever the criterion (signed ones included), except under
        # straight-through criteria, whose scores keep counting for pruned weights.
        weight_scores = score(value * mask, **weight_inputs)
        if not score.straight_through:
            weight_scores = np.where(mask > 0, weight_scores, -np.inf)
        _refuse_nan_scores(wrapper, len(scores), np.where(mask > 0, value, 0.0), weight_scores)
        if wrapper.score_normalization == "lamp":
            weight_scores = criteria.lamp(weight_scores)
        scores.append(weight_scores)
    return scores


def _refuse_nan_scores(wrapper: PruneLowMagnitude, index: int, value: np.ndarray, scores: np.ndarray) -> None:
    # A NaN score cannot be ranked; say where it came from, since the fix differs.
    nan_scores = masking.count_nan(scores)
    if not nan_scores:
        return
    where = f"Layer '{wrapper.name}' weight '{wrapper.pruned_weights[index].name}'"
    nan_weights = masking.count_nan(value)
    if nan_weights:
        raise ValueError(
            f"{where} has {nan_weights} NaN values, so its weights cannot be ranked for pruning: the "
            "model diverged. Lower the learning rate, check the training data for NaN or inf, or "
            "restart from an earlier checkpoint."
        )
    raise ValueError(
        f"{where} got {nan_scores} NaN scores from criterion {wrapper.criterion!r} although its "
        "weights are finite: the calibration data (or the gradients or activations it produces) "
        "hold NaN or inf. Check the calibration data with `np.isfinite(x).all()`."
    )


# Criteria that read nothing from the host are scored with keras.ops where the weights live, and
# their masks computed there too (`device_masking`), when that is an accelerator; on the CPU numpy
# is faster. The other criteria need host data (calibration) anyway.
_DEVICE_SCORES = {
    "magnitude": lambda weight, variables: ops.abs(weight),
    "movement": lambda weight, variables: variables["accumulated_score"].value,
}


def _scored_on_device(wrapper: PruneLowMagnitude) -> bool:
    return (
        wrapper.criterion in _DEVICE_SCORES
        and wrapper.score_normalization is None
        and device_masking.on_accelerator(wrapper.pruned_weights[0])
    )


def _device_scores(wrapper: PruneLowMagnitude) -> list:
    score = _DEVICE_SCORES[wrapper.criterion]
    accumulated = wrapper.movement_scores or [None] * len(wrapper.pruned_weights)
    scores = []
    for weight, mask, accumulated_score in zip(wrapper.pruned_weights, wrapper.masks, accumulated):
        kept = ops.greater(mask.value, 0)
        weight_scores = score(
            weight.value * ops.cast(mask.value, weight.dtype), {"accumulated_score": accumulated_score}
        )
        if not criteria.get(wrapper.criterion).straight_through:
            weight_scores = ops.where(kept, weight_scores, ops.cast(float("-inf"), weight_scores.dtype))
        nans = device_masking.count_nan(weight_scores)
        if nans:
            raise ValueError(
                f"Layer '{wrapper.name}' weight '{weight.name}' has {nans} NaN values, so its weights "
                "cannot be ranked for pruning: the model diverged. Lower the learning rate, check the "
                "training data for NaN or inf, or restart from an earlier checkpoint."
            )
        scores.append(weight_scores)
    return scores


def _device_layer_masks(wrapper: PruneLowMagnitude, scores: list, sparsity: float) -> list:
    if wrapper.sparsity_m_by_n is not None:
        m, n = wrapper.sparsity_m_by_n
        return [device_masking.m_by_n_mask(s, m, n, axis=input_axis(wrapper.layer)) for s in scores]
    return [
        device_masking.block_mask(s, sparsity, wrapper.block_size, wrapper.block_pooling_type) for s in scores
    ]


def default_min_density(sparsity: float) -> float:
    """The share of each weight that scope "global" keeps when `min_density` is None.

    Half the density the group keeps on average: layers whose scores are all low (small weights,
    quiet inputs) still keep a working share, and the target stays reachable by the others.

    Example:

    ```python
    default_min_density(0.9)  # 0.05
    ```
    """
    return 0.5 * (1.0 - sparsity)


def _warn_about_emptied(wrappers: list[PruneLowMagnitude]) -> None:
    # A layer with every weight pruned outputs only its bias: the network behind it is cut off.
    # One boolean per mask comes back to the host, not the mask, so that masks computed on an
    # accelerator stay there.
    for wrapper in wrappers:
        for weight, mask in zip(wrapper.pruned_weights, wrapper.masks):
            if int(np.prod(mask.shape)) and not bool(
                ops.convert_to_numpy(ops.any(ops.greater(mask.value, 0)))
            ):
                warnings.warn(
                    f"Layer '{wrapper.name}' has every weight of '{weight.name}' pruned (sparsity "
                    f"{wrapper.pruning_schedule!r}, scope {wrapper.scope!r}, min_density="
                    f"{wrapper.min_density}): it passes on only its bias. Keep some of it with "
                    "`min_density` > 0 (None, the default, keeps half the average density) or a "
                    "lower sparsity.",
                    stacklevel=3,
                )


def layer_masks(wrapper: PruneLowMagnitude, scores: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Masks for one wrapper's weights at `sparsity`, in the wrapper's pattern (plain, block, m:n)."""
    if wrapper.sparsity_m_by_n is not None:
        m, n = wrapper.sparsity_m_by_n
        return [masking.m_by_n_mask(s, m, n, axis=input_axis(wrapper.layer)) for s in scores]
    return [masking.block_mask(s, sparsity, wrapper.block_size, wrapper.block_pooling_type) for s in scores]


def _schedule_key(wrapper: PruneLowMagnitude) -> str:
    schedule = wrapper.pruning_schedule
    return json.dumps([type(schedule).__name__, schedule.get_config()], sort_keys=True, default=str)


def prune_to(wrappers: Iterable[PruneLowMagnitude], sparsity_of, calibration=None) -> None:
    """Recomputes masks now. `sparsity_of(wrapper)` gives each wrapper's sparsity, or None to skip.

    Wrappers with scope "global" that share a schedule are pruned together with one threshold,
    each keeping at least its `min_density` (`default_min_density` when None). A warning names
    every layer whose weights end up all pruned. `calibration` (a `tfsparse.calibration.Calibration`)
    measures gradients and input norms for criteria that need them ("taylor", "movement", "wanda").

    Example:

    ```python
    prune_to(collect_wrappers(pruned), lambda wrapper: 0.8)  # one-shot, 80% everywhere
    ```
    """
    due = [(wrapper, sparsity_of(wrapper)) for wrapper in wrappers]
    due = [(wrapper, sparsity) for wrapper, sparsity in due if sparsity is not None]
    inputs = criterion_inputs([wrapper for wrapper, _ in due], calibration)
    regrowing = _regrowing(due)
    _regrow([wrapper for wrapper, _ in due if id(wrapper) in regrowing], inputs, calibration)
    due_now = [(wrapper, sparsity) for wrapper, sparsity in due if id(wrapper) not in regrowing]
    global_groups: dict[str, list[tuple[PruneLowMagnitude, float]]] = {}
    for wrapper, sparsity in due_now:
        if wrapper.scope == "global" and wrapper.sparsity_m_by_n is None:
            global_groups.setdefault(_schedule_key(wrapper), []).append((wrapper, sparsity))
        elif _scored_on_device(wrapper):
            wrapper.set_masks(_device_layer_masks(wrapper, _device_scores(wrapper), sparsity))
        else:
            wrapper.set_masks(layer_masks(wrapper, layer_scores(wrapper, inputs[id(wrapper)]), sparsity))
    for group in global_groups.values():
        if all(_scored_on_device(wrapper) for wrapper, _ in group):
            scores = [_device_scores(wrapper) for wrapper, _ in group]
            flat_scores = [s for per_wrapper in scores for s in per_wrapper]
            min_density = [
                default_min_density(group[0][1]) if wrapper.min_density is None else wrapper.min_density
                for (wrapper, _), per in zip(group, scores)
                for _ in per
            ]
            masks = iter(device_masking.global_masks(flat_scores, group[0][1], min_density=min_density))
            for (wrapper, _), per_wrapper in zip(group, scores):
                wrapper.set_masks([next(masks) for _ in per_wrapper])
            continue
        scores = [layer_scores(wrapper, inputs[id(wrapper)]) for wrapper, _ in group]
        flat_scores = [s for per_wrapper in scores for s in per_wrapper]
        sparsity = group[0][1]
        min_density = [
            default_min_density(sparsity) if wrapper.min_density is None else wrapper.min_density
            for (wrapper, _), per_wrapper in zip(group, scores)
            for _ in per_wrapper
        ]
        masks = iter(masking.global_masks(flat_scores, sparsity, min_density=min_density))
        for (wrapper, _), per_wrapper in zip(group, scores):
            wrapper.set_masks([next(masks) for _ in per_wrapper])
    _warn_about_emptied([wrapper for wrapper, _ in due])


def _regrowing(due: list[tuple[PruneLowMagnitude, float]]) -> set[int]:
    """Ids of the wrappers that regrow at this update instead of being pruned further: those with a
    regrowth whose weights (with scope "global", whose group's weights) have reached the sparsity."""
    moving = [(wrapper, sparsity) for wrapper, sparsity in due if regrowth.moves_now(wrapper)]
    groups: dict[str, list[PruneLowMagnitude]] = {}
    found = set()
    for wrapper, sparsity in moving:
        if wrapper.scope == "global":
            groups.setdefault(_schedule_key(wrapper), []).append(wrapper)
        elif all(regrowth.reached([mask], sparsity) for mask in wrapper.get_masks()):
            found.add(id(wrapper))
    sparsities = {id(wrapper): sparsity for wrapper, sparsity in moving}
    for group in groups.values():
        if regrowth.reached([m for w in group for m in w.get_masks()], sparsities[id(group[0])]):
            found.update(id(wrapper) for wrapper in group)
    return found


def _regrow(wrappers: list[PruneLowMagnitude], inputs: dict[int, list[dict]], calibration) -> None:
    # Layers at their target sparsity with a regrowth move their masks instead of re-pruning them
    # (see `tfsparse.regrowth`); their zeros stay as many, so they leave the other layers' global
    # threshold alone.
    rigl = [w for w in wrappers if w.regrowth.needs_gradients]
    gradients = dict(zip(map(id, rigl), regrowth.dense_gradients(rigl, calibration)))
    for wrapper in wrappers:
        masks = regrowth.regrown_masks(
            wrapper, layer_scores(wrapper, inputs[id(wrapper)]), gradients.get(id(wrapper))
        )
        regrowth.set_regrown_masks(wrapper, masks)


def update_masks(wrappers: Iterable[PruneLowMagnitude], step: int, calibration=None) -> bool:
    """Recomputes the masks of the wrappers whose schedule prunes at `step`; True if any did.

    `calibration` measures gradients or input norms for criteria that need them (see `prune_to`).

    Example:

    ```python
    update_masks(collect_wrappers(pruned), step=0)
    ```
    """
    wrappers = list(wrappers)
    decisions = {}
    for wrapper in wrappers:
        should_prune, sparsity = wrapper.pruning_schedule(step)
        decisions[id(wrapper)] = sparsity if should_prune else None
    if all(value is None for value in decisions.values()):
        return False
    prune_to(wrappers, lambda wrapper: decisions[id(wrapper)], calibration)
    return True


def reapply_masks(wrappers: Iterable[PruneLowMagnitude]) -> None:
    """Zeroes the stored values of pruned weights (an optimizer's momentum can move them)."""
    for wrapper in wrappers:
        wrapper.set_masks([mask.value for mask in wrapper.masks])
