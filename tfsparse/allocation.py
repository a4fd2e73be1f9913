"""Automatic per-layer sparsity: from a sensitivity scan to `{layer name: sparsity}`.

Each layer's scanned curve (metric drop against sparsity, from 0) is replaced by its lower convex
hull, and sparsity is handed out where it costs least per pruned weight: the hull segments of all
layers are taken in increasing order of drop per weight until the overall target is met, the last
one in part. Layers that barely react to pruning end up sparse, sensitive ones dense. With
`max_metric_drop`, the largest overall sparsity whose pruned model (one-shot, all chosen layers at
once) stays within the drop on the same data is searched for instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from tfsparse.sensitivity import (
    DEFAULT_SPARSITIES,
    MaskedCopy,
    SensitivityScan,
    check_data,
    resolve_metric,
    sensitivity_scan,
)


def _hull_segments(name: str, size: int, drops: dict[float, float]) -> list[tuple]:
    """`(drop per weight, layer, from sparsity, to sparsity)` along the lower convex hull."""
    points = [(0.0, 0.0)] + sorted(drops.items())
    # Drops are measured: a higher sparsity that happened to score better says nothing new.
    monotone, worst = [], -np.inf
    for sparsity, drop in points:
        worst = max(worst, drop)
        monotone.append((sparsity, worst))
    hull = [monotone[0]]
    for point in monotone[1:]:
        while len(hull) >= 2:
            (s0, d0), (s1, d1) = hull[-2], hull[-1]
            if (d1 - d0) * (point[0] - s0) >= (point[1] - d0) * (s1 - s0):
                hull.pop()
            else:
                break
        hull.append(point)
    return [
        ((d1 - d0) / ((s1 - s0) * size), name, s0, s1)
        for (s0, d0), (s1, d1) in zip(hull, hull[1:])
        if s1 > s0
    ]


def allocate(scan: SensitivityScan, target: float) -> dict[str, float]:
    """Per-layer sparsities from `scan` whose size-weighted mean is `target`, cheapest drops first.

    Args:
        scan: a `SensitivityScan`.
        target: the overall sparsity over the scanned layers, weighted by their sizes.

    Returns:
        `{layer name: sparsity}` for every scanned layer (0.0 for those left dense).

    Example:

    ```python
    tfsparse.allocation.allocate(scan, 0.9)  # {'conv2d': 0.62, 'dense': 0.95, ...}
    ```
    """
    sizes = {name: scan.sizes[name] for name in scan.results}
    total = sum(sizes.values())
    reachable = sum(sizes[name] * max(by) for name, by in scan.results.items()) / total
    if not 0.0 <= target <= reachable + 1e-9:
        raise ValueError(
            f"Argument `target` must be in [0, {reachable:.4f}], the most the scanned sparsities reach "
            f"(scan higher sparsities to go further). Received: target={target}"
        )
    segments = [
        segment
        for name, drops in scan.drops().items()
        for segment in _hull_segments(name, sizes[name], drops)
    ]
    segments.sort(key=lambda segment: segment[0])
    chosen = dict.fromkeys(scan.results, 0.0)
    needed = target * total
    for _, name, start, end in segments:
        if needed <= 0:
            break
        step = min(end - start, needed / sizes[name])
        chosen[name] = start + step
        needed -= step * sizes[name]
    return {name: float(round(sparsity, 6)) for name, sparsity in chosen.items()}


def auto_sparsity(
    model: keras.Model,
    data,
    target: float | None = None,
    max_metric_drop: float | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    metric=None,
    criterion: str = "magnitude",
    scan: SensitivityScan | None = None,
    batch_size: int = 256,
    verbose: int = 1,
    calibration_data=None,
) -> dict[str, float]:
    """Chooses a sparsity for every prunable layer from a sensitivity scan on held-out data.

    Give `target` (the overall sparsity, weighted by layer sizes, which the result meets) or
    `max_metric_drop` (the result is the highest overall sparsity found whose one-shot pruned model
    loses at most that much of the metric on `data`). Choose on a validation split and report on a
    separate test split: the choice is fitted to `data`.

    Args:
        model: a trained Sequential or functional model (not changed).
        data: held-out arrays `(x, y)`.
        target: overall sparsity in [0, 1) over the layers returned.
        max_metric_drop: the largest drop of the metric allowed (e.g. 0.01 for one point of
            accuracy), >= 0.
        sparsities: the sparsities the scan tries; the highest bounds what a layer can get.
        metric: as for `sensitivity_scan` (default: accuracy for classifiers, else the loss).
        criterion: "magnitude", "wanda" or "taylor", for the scan and the `max_metric_drop` checks.
        scan: a `SensitivityScan` of `model` on `data` to reuse instead of scanning again.
        batch_size: the batch size of the predictions.
        verbose: 1 shows the scan's progress bar.
        calibration_data: for "wanda" and "taylor", the data they score weights on instead of
            `data` (see `sensitivity_scan`): a few hundred training samples `(x, y)`.

    Returns:
        `{layer name: sparsity}` for every scanned layer, ready for
        `prune_low_magnitude(model, pruning_schedule={name: ConstantSparsity(s, 0) ...})`.

    Example:

    ```python
    per_layer = tfsparse.auto_sparsity(model, (x_val, y_val), target=0.9)
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule={n: tfsparse.ConstantSparsity(s, 0) for n, s in per_layer.items()})
    ```
    """
    if (target is None) == (max_metric_drop is None):
        raise ValueError(
            "Pass exactly one of the arguments `target` and `max_metric_drop`. "
            f"Received: target={target}, max_metric_drop={max_metric_drop}"
        )
    if target is not None and not 0.0 <= target < 1.0:
        raise ValueError(f"Argument `target` must be in [0, 1). Received: target={target}")
    if max_metric_drop is not None and not max_metric_drop >= 0.0:
        raise ValueError(
            f"Argument `max_metric_drop` must be a number >= 0. Received: max_metric_drop={max_metric_drop}"
        )
    x, y = check_data(data)
    if scan is None:
        scan = sensitivity_scan(
            model,
            (x, y),
            sparsities,
            metric=metric,
            criterion=criterion,
            batch_size=batch_size,
            verbose=verbose,
            calibration_data=calibration_data,
        )
    elif not isinstance(scan, SensitivityScan):
        raise ValueError(f"Argument `scan` must be a `tfsparse.SensitivityScan`. Received: scan={scan!r}")
    if target is not None:
        return allocate(scan, target)
    _, metric_fn, higher_is_better = resolve_metric(model, y, metric if metric is not None else scan.metric)
    sign = 1.0 if higher_is_better else -1.0
    reachable = sum(scan.sizes[n] * max(by) for n, by in scan.results.items()) / sum(scan.sizes.values())
    # The drop grows with the overall sparsity: bisect on it, measuring the model pruned as chosen.
    masked = MaskedCopy(model, (x, y), scan.criterion, batch_size, calibration_data)
    low, high, best = 0.0, reachable, allocate(scan, 0.0)
    for _ in range(7):
        middle = (low + high) / 2
        chosen = allocate(scan, middle)
        masked.set_sparsities(chosen)
        drop = sign * (scan.baseline - metric_fn(y, masked.predict()))
        if drop <= max_metric_drop:
            low, best = middle, chosen
        else:
            high = middle
    return best
