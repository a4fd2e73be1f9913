"""Recomputing the masks of a model's pruning wrappers: schedule -> scores -> masks -> variables.

This is the host-side step that `UpdatePruningStep` runs when a schedule says to prune, and that
one-shot pruning runs once. It reads the weights, scores them with each wrapper's criterion, turns
scores into masks per layer or with one global threshold, and writes masks and masked weights back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import keras
import numpy as np

from tfsparse import criteria, masking
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


def _m_by_n_axis(layer: keras.layers.Layer) -> int:
    return -1 if isinstance(layer, _INPUT_AXIS_LAST) else -2


def _scores(wrapper: PruneLowMagnitude) -> list[np.ndarray]:
    score = criteria.get(wrapper.criterion)
    # Weights already pruned score from their masked value, so a pruned weight stays pruned.
    return [
        score(value * mask) for value, mask in zip(wrapper.get_pruned_weight_values(), wrapper.get_masks())
    ]


def layer_masks(wrapper: PruneLowMagnitude, scores: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Masks for one wrapper's weights at `sparsity`, in the wrapper's pattern (plain, block, m:n)."""
    if wrapper.sparsity_m_by_n is not None:
        m, n = wrapper.sparsity_m_by_n
        return [masking.m_by_n_mask(s, m, n, axis=_m_by_n_axis(wrapper.layer)) for s in scores]
    return [masking.block_mask(s, sparsity, wrapper.block_size, wrapper.block_pooling_type) for s in scores]


def _schedule_key(wrapper: PruneLowMagnitude) -> str:
    schedule = wrapper.pruning_schedule
    return json.dumps([type(schedule).__name__, schedule.get_config()], sort_keys=True, default=str)


def prune_to(wrappers: Iterable[PruneLowMagnitude], sparsity_of) -> None:
    """Recomputes masks now. `sparsity_of(wrapper)` gives each wrapper's sparsity, or None to skip.

    Wrappers with scope "global" that share a schedule are pruned together with one threshold.

    Example:

    ```python
    prune_to(collect_wrappers(pruned), lambda wrapper: 0.8)  # one-shot, 80% everywhere
    ```
    """
    global_groups: dict[str, list[tuple[PruneLowMagnitude, float]]] = {}
    for wrapper in wrappers:
        sparsity = sparsity_of(wrapper)
        if sparsity is None:
            continue
        if wrapper.scope == "global" and wrapper.sparsity_m_by_n is None:
            global_groups.setdefault(_schedule_key(wrapper), []).append((wrapper, sparsity))
        else:
            wrapper.set_masks(layer_masks(wrapper, _scores(wrapper), sparsity))
    for group in global_groups.values():
        scores = [_scores(wrapper) for wrapper, _ in group]
        flat_scores = [s for per_wrapper in scores for s in per_wrapper]
        masks = iter(masking.global_masks(flat_scores, group[0][1]))
        for (wrapper, _), per_wrapper in zip(group, scores):
            wrapper.set_masks([next(masks) for _ in per_wrapper])


def update_masks(wrappers: Iterable[PruneLowMagnitude], step: int) -> bool:
    """Recomputes the masks of the wrappers whose schedule prunes at `step`; True if any did.

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
    prune_to(wrappers, lambda wrapper: decisions[id(wrapper)])
    return True


def reapply_masks(wrappers: Iterable[PruneLowMagnitude]) -> None:
    """Zeroes the stored values of pruned weights (an optimizer's momentum can move them)."""
    for wrapper in wrappers:
        wrapper.set_masks(wrapper.get_masks())
