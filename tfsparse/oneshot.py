"""Pruning in one go, without training: from calibration data (Wanda), or below a threshold.

`prune_oneshot` suits models too big to retrain: it scores each weight on a few batches of inputs
and sets the masks once. `prune_by_threshold` is the second half of regularized training: after an
L1 or group-lasso penalty has pushed weights toward zero, it prunes those that got there.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import keras
import numpy as np

from tfsparse import criteria, mask_updates
from tfsparse.calibration import Calibration, _as_arrays
from tfsparse.prune import prune_low_magnitude, strip_pruning
from tfsparse.schedules import ConstantSparsity


def _sparsity_report(wrappers) -> dict[str, float]:
    report = {}
    for wrapper in wrappers:
        masks = wrapper.get_masks()
        zeros = sum(int(np.count_nonzero(m == 0)) for m in masks)
        report[wrapper.name] = zeros / max(sum(m.size for m in masks), 1)
    return report


def _first_batches(data, num_batches: int | None, batch_size: int):
    """The calibration data, in a form read the same way for every layer: arrays (the first
    `num_batches * batch_size` samples), or a list of the first `num_batches` batches."""
    arrays = _as_arrays(data)
    if arrays is not None and num_batches is not None:
        end = num_batches * batch_size
        return tuple(array[:end] for array in arrays if array is not None)
    if arrays is not None or not isinstance(data, Iterable):
        return data
    if num_batches is None:
        cardinality = getattr(data, "cardinality", None)
        if callable(cardinality) and int(cardinality()) == -1:  # tf.data's INFINITE_CARDINALITY
            raise ValueError(
                "Argument `data` is an endless dataset; pass `num_batches=` (e.g. 8) to calibrate on "
                "its first batches. Received: num_batches=None"
            )
        return list(data)
    return list(itertools.islice(iter(data), num_batches))


def _prune_sequentially(wrappers, sparsity_of, calibration) -> None:
    # Each layer is scored on the inputs it gets once the layers before it are pruned, so that it
    # keeps the weights that matter for the signal it will actually see (Sun et al., 2023, 5.).
    for wrapper in wrappers:
        mask_updates.prune_to([wrapper], sparsity_of, calibration)


def prune_oneshot(
    model: keras.Model,
    sparsity: float | dict[str, float],
    data=None,
    criterion: str = "wanda",
    sparsity_m_by_n: Sequence[int] | None = None,
    scope: str = "layer",
    strip: bool = True,
    batch_size: int = 32,
    loss=None,
    num_batches: int | None = None,
    sequential: bool = True,
    **kwargs,
) -> keras.Model:
    """Prunes a trained model once, scoring weights on calibration data; no retraining.

    With the default criterion "wanda", a weight's score is `|w|` times the L2 norm, over `data`, of
    the input feature it multiplies (Sun et al., 2023): a small weight on a loud input outranks a
    larger one on a quiet input. "taylor" scores `|w * gradient|` (needs labels), "magnitude"
    needs no data. The model passed in is not changed.

    Args:
        model: a trained Sequential or functional model.
        sparsity: the fraction of each pruned weight to zero (of all of them with
            `scope="global"`), in [0, 1). Ignored with `sparsity_m_by_n`. Or a dict
            `{layer name: sparsity}` (from `tfsparse.auto_sparsity`): layers not named stay dense.
        data: calibration inputs: `x` or `(x, y)` arrays, or an iterable of batches. A few
            hundred samples are enough.
        criterion: "wanda", "taylor" or "magnitude".
        sparsity_m_by_n: `(m, n)`, e.g. `(2, 4)`, to keep the `m` best of every `n` consecutive
            weights along the input dimension instead of a sparsity.
        scope: "layer" or "global" (one threshold across layers).
        strip: True returns a plain Keras model with the masks applied (ready to save or
            export); False returns the pruned model (`PruneLowMagnitude` layers holding the
            masks), to fine-tune with `UpdatePruningStep` or inspect.
        batch_size: batch size when `data` are arrays.
        loss: the loss for "taylor"; defaults to the loss `model` was compiled with.
        num_batches: how many batches of `data` to calibrate on; None uses all of it. Needed
            for endless data (a repeated `tf.data.Dataset`, a generator): the first
            `num_batches` batches are taken once and reused for every layer.
        sequential: with "wanda" and scope "layer", prune the layers one after another, each
            scored on the inputs it receives from the layers before it already pruned (the
            sequential variant of Wanda); False scores every layer on the dense model's inputs
            in one pass. Scope "global" always scores all layers at once (one threshold).
        **kwargs: further `PruneLowMagnitude` arguments (`block_size`, `score_normalization`,
            `min_density`).

    Returns:
        The pruned copy of `model`: plain if `strip`, else wrapped.

    Example:

    ```python
    small = tfsparse.prune_oneshot(model, 0.5, x_train[:256])
    streamed = tfsparse.prune_oneshot(model, 0.5, dataset.repeat(), num_batches=8)
    two_four = tfsparse.prune_oneshot(model, 0.5, x_train[:256], sparsity_m_by_n=(2, 4))
    chosen = tfsparse.prune_oneshot(model, tfsparse.auto_sparsity(model, (x_val, y_val), target=0.9))
    ```
    """
    scorer = criteria.get(criterion)
    if scorer.signed:
        raise ValueError(
            f"Argument `criterion` of `prune_oneshot` must score weights from one model state: one of "
            f"['magnitude', 'taylor', 'wanda']. Received: criterion={criterion!r}"
        )
    per_layer = dict(sparsity) if isinstance(sparsity, dict) else None
    for name, value in (per_layer or {"": sparsity}).items():
        if sparsity_m_by_n is None and not 0.0 <= value < 1.0:
            where = f" of layer '{name}'" if name else ""
            raise ValueError(f"Argument `sparsity`{where} must be in [0, 1). Received: sparsity={value}")
    if scorer.needs_calibration and data is None:
        raise ValueError(
            f"Argument `data` is needed by criterion {criterion!r}: pass calibration inputs (`x`, or "
            "`(x, y)` for 'taylor'). Received: data=None"
        )
    if per_layer is not None:
        schedule = {name: ConstantSparsity(value, 0) for name, value in per_layer.items()}
    else:
        schedule = ConstantSparsity(0.5 if sparsity_m_by_n is not None else sparsity, 0)
    pruned = prune_low_magnitude(
        model,
        pruning_schedule=schedule,
        sparsity_m_by_n=sparsity_m_by_n,
        criterion=criterion,
        scope=scope,
        **kwargs,
    )
    if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(
            f"Argument `num_batches` must be a positive integer or None. Received: num_batches={num_batches}"
        )
    wrappers = mask_updates.collect_wrappers(pruned)
    calibration = None
    if data is not None:
        loss = loss if loss is not None else getattr(model, "loss", None)
        calibration = Calibration(
            pruned,
            _first_batches(data, num_batches, batch_size),
            batches=None,
            batch_size=batch_size,
            loss=loss,
        )

    def sparsity_of(wrapper):
        return wrapper.pruning_schedule(0)[1]

    if sequential and criterion == "wanda" and (scope == "layer" or sparsity_m_by_n is not None):
        _prune_sequentially(wrappers, sparsity_of, calibration)
    else:
        mask_updates.prune_to(wrappers, sparsity_of, calibration)
    return strip_pruning(pruned) if strip else pruned


def prune_by_threshold(
    model: keras.Model, threshold: float | None = None, sparsity: float | None = None, calibration=None
) -> dict[str, float]:
    """Prunes the weights a regularizer pushed toward zero, and reports the sparsity each layer reached.

    Give either `threshold` (every pruned weight with `|w| < threshold` is masked) or `sparsity`
    (masks are recomputed to that sparsity with each layer's criterion and scope, so
    `scope="global"` layers share one threshold). Weights already pruned stay pruned. Fine-tune
    afterwards with `tfsparse.finetune` (its schedule must have ended, so masks stay fixed).

    Args:
        model: a model from `prune_low_magnitude`, typically trained with a `regularizer`.
        threshold: magnitude below which weights are pruned, >= 0.
        sparsity: target sparsity in [0, 1), instead of a threshold.
        calibration: a `tfsparse.calibration.Calibration`, for data-driven criteria with
            `sparsity`.

    Returns:
        `{layer name: sparsity of its pruned weights}` for every pruning wrapper.

    Example:

    ```python
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule=tfsparse.ConstantSparsity(0.0, 0, end_step=0),
        regularizer=tfsparse.regularizers.L1(1e-4))
    pruned.fit(x, y, epochs=5, callbacks=[tfsparse.UpdatePruningStep()])
    tfsparse.prune_by_threshold(pruned, threshold=1e-3)  # {'prune_low_magnitude_dense': 0.91, ...}
    ```
    """
    if (threshold is None) == (sparsity is None):
        raise ValueError(
            "Pass exactly one of the arguments `threshold` and `sparsity`. "
            f"Received: threshold={threshold}, sparsity={sparsity}"
        )
    wrappers = [w for w in mask_updates.collect_wrappers(model) if w.built]
    if not wrappers:
        raise ValueError(
            f"Model '{model.name}' has no pruned layers; wrap it with `tfsparse.prune_low_magnitude` "
            "(with `regularizer=...`) and train it first."
        )
    mask_updates.sync_backend_state(model)
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"Argument `sparsity` must be in [0, 1). Received: sparsity={sparsity}")
        mask_updates.prune_to(wrappers, lambda wrapper: sparsity, calibration)
        return _sparsity_report(wrappers)
    if not threshold >= 0.0:
        raise ValueError(f"Argument `threshold` must be a number >= 0. Received: threshold={threshold}")
    for wrapper in wrappers:
        if wrapper.sparsity_m_by_n is not None or tuple(wrapper.block_size) != (1, 1):
            raise ValueError(
                f"Layer '{wrapper.name}' prunes in blocks or m:n groups, which a threshold on single "
                "weights would break; pass `sparsity=` instead. Received: threshold="
                f"{threshold}"
            )
        masks = [
            mask * (np.abs(value) >= threshold)
            for value, mask in zip(wrapper.get_pruned_weight_values(), wrapper.get_masks())
        ]
        wrapper.set_masks(masks)
    return _sparsity_report(wrappers)
