"""Redundant channels: near-duplicates found by SimHash (to merge) and FPGM's geometric-median scores.

Pure numpy: each channel of a group is one row of `vectors` (its incoming weights, flattened).
`near_duplicates` decides which channels go and which channel each merges into ("lsh");
`merge_outgoing` folds a removed channel's outgoing weights into its duplicate, so the next layer
sees almost the same input; `fpgm_scores` scores channels by their distance to the group's
geometric median ("fpgm": the nearest are the most replaceable).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def simhash_codes(vectors: np.ndarray, tables: int = 4, bits: int = 8, seed: int = 0) -> np.ndarray:
    """SimHash codes: for each table, `bits` signs of random projections of every vector.

    Vectors at a small angle share most bits, so they land in the same bucket of some table with
    high probability; `tables` independent tables make missing a near-duplicate unlikely.

    Args:
        vectors: `(channels, features)`.
        tables: number of independent hash tables.
        bits: random hyperplanes per table (at most 62).
        seed: seed of the hyperplanes.

    Returns:
        `(tables, channels)` int64 codes; bit `b` of a code is the sign of projection `b`.

    Example:

    ```python
    codes = simhash_codes(np.eye(3), tables=2, bits=4)  # shape (2, 3)
    ```
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    planes = np.random.default_rng(seed).standard_normal((tables, vectors.shape[1], bits))
    signs = np.einsum("cf,tfb->tcb", vectors, planes) > 0
    return (signs.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=-1)


def buckets(codes: np.ndarray) -> list[np.ndarray]:
    """The channels sharing a code, per table: every bucket of two or more, in table then code order.

    Example:

    ```python
    buckets(np.array([[5, 3, 5, 3, 1]]))  # [array([1, 3]), array([0, 2])]
    ```
    """
    found = []
    for table in np.atleast_2d(codes):
        values, inverse = np.unique(table, return_inverse=True)
        for bucket in range(values.size):
            members = np.flatnonzero(inverse == bucket)
            if members.size > 1:
                found.append(members)
    return found


def _relative_distances(vectors: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`|a - b| / (|a| + |b|)`: 0 for equal vectors, 1 for opposite ones, whatever their scale."""
    difference = np.linalg.norm(vectors[left] - vectors[right], axis=1)
    scale = np.linalg.norm(vectors[left], axis=1) + np.linalg.norm(vectors[right], axis=1)
    return np.where(scale > 0, difference / np.maximum(scale, 1e-30), 0.0)


def _pairs_in(bucket_list: list[np.ndarray], channels: int, seen: np.ndarray) -> np.ndarray:
    """Keys `i * channels + j` (i < j) of the pairs sharing a bucket, without those in `seen`."""
    keys = [
        members[a] * channels + members[b]
        for members in bucket_list
        for a, b in [np.triu_indices(members.size, k=1)]
    ]
    if not keys:
        return np.zeros(0, dtype=np.int64)
    keys = np.unique(np.concatenate(keys))
    return keys[~np.isin(keys, seen)]


def near_duplicates(
    vectors: np.ndarray,
    count: int,
    tables: int = 4,
    bits: int = 8,
    seed: int = 0,
    fixed: np.ndarray | None = None,
) -> dict[int, int]:
    """Which `count` channels to remove as near-duplicates, and the channel each one merges into.

    Candidate pairs are channels that share a SimHash bucket in some table. They are taken most
    similar first (smallest `|a - b| / (|a| + |b|)`); of a pair of channels both still there, the
    later one (unless fixed) is removed and merges into the earlier one, taking along what was
    merged into it before, so every removed channel points at a channel that stays. When the full
    codes give too few pairs, shorter code prefixes (coarser buckets, down to a single one) are
    searched next, so `count` channels are always found if the group has them.

    Args:
        vectors: `(channels, features)`: each channel's incoming weights.
        count: how many channels to remove.
        tables: SimHash tables.
        bits: hyperplanes per table.
        seed: seed of the hyperplanes.
        fixed: per channel, True if it must stay (it can still be a merge target).

    Returns:
        `{removed channel: channel it merges into}`, with `min(count, removable channels,
        channels - 1)` entries.

    Example:

    ```python
    rng = np.random.default_rng(0)
    filters = rng.normal(size=(4, 9))
    filters = np.concatenate([filters, filters[:1] + 0.01])  # channel 4 copies channel 0
    near_duplicates(filters, 1)  # {4: 0}
    ```
    """
    return {removed: kept for removed, kept, _ in _greedy(vectors, count, tables, bits, seed, fixed)}


def _greedy(vectors, count, tables, bits, seed, fixed) -> list[tuple[int, int, float]]:
    """`(removed, kept, distance)` in the order `near_duplicates` takes them."""
    vectors = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    channels = vectors.shape[0]
    fixed = np.zeros(channels, dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    count = min(int(count), int((~fixed).sum()), channels - 1)
    codes = simhash_codes(vectors, tables, bits, seed)
    taken: list[tuple[int, int, float]] = []
    merged: dict[int, int] = {}
    seen = np.zeros(0, dtype=np.int64)
    for prefix in range(bits, -1, -1):
        if len(taken) >= count:
            break
        keys = _pairs_in(buckets(codes & ((1 << prefix) - 1)), channels, seen)
        if keys.size == 0:
            continue
        seen = np.union1d(seen, keys)
        left, right = keys // channels, keys % channels
        distances = _relative_distances(vectors, left, right)
        for position in np.lexsort((right, left, distances)):
            if len(taken) >= count:
                break
            first, second = int(left[position]), int(right[position])
            if first in merged or second in merged or (fixed[first] and fixed[second]):
                continue
            removed, kept = (first, second) if fixed[second] else (second, first)
            # What was merged into the removed channel moves on with it to `kept`.
            for earlier, target in merged.items():
                if target == removed:
                    merged[earlier] = kept
            merged[removed] = kept
            taken.append((removed, kept, float(distances[position])))
    return [(removed, merged[removed], distance) for removed, _, distance in taken]


def duplicate_scores(
    vectors: np.ndarray, tables: int = 4, bits: int = 8, seed: int = 0, fixed: np.ndarray | None = None
) -> np.ndarray:
    """Scores that rank channels in the order `near_duplicates` removes them (lower goes first).

    A removed channel scores the largest relative distance `|a - b| / (|a| + |b|)` of the pairs
    taken up to its own, in [0, 1], so the scores of different groups compare (an exact copy
    scores 0); the channel that would be removed last of all and fixed channels score 2.

    Example:

    ```python
    duplicate_scores(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.001]]))  # [2., ~0.71, ~0.0005]
    ```
    """
    vectors = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    scores = np.full(vectors.shape[0], 2.0)
    reached = 0.0
    for removed, _, distance in _greedy(vectors, vectors.shape[0], tables, bits, seed, fixed):
        reached = max(reached, distance)
        scores[removed] = reached
    return scores


def merge_targets(vectors: np.ndarray, removed) -> dict[int, int]:
    """For each removed channel, the most similar channel that stays (smallest relative distance).

    Example:

    ```python
    merge_targets(np.array([[1.0], [5.0], [1.1]]), [2])  # {2: 0}
    ```
    """
    vectors = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    removed = [int(r) for r in removed]
    kept = np.setdiff1d(np.arange(vectors.shape[0]), removed)
    targets = {}
    for channel in removed:
        distances = _relative_distances(vectors, np.full(kept.size, channel), kept)
        targets[channel] = int(kept[np.argmin(distances)])
    return targets


def merge_outgoing(weight: np.ndarray, axis: int, merges: Mapping[int, int]) -> np.ndarray:
    """Folds each removed channel's outgoing weights into the channel it merges into.

    For a layer reading the channels along `axis` (a kernel's input axis), the slice of a removed
    channel is added to the slice of its target; once the removed channel is sliced out, the layer
    sees `target + removed` where it saw both, which is the same input when they were equal.

    Args:
        weight: the reading layer's weight.
        axis: the axis that runs over the channels.
        merges: `{removed channel: target channel}`, as `near_duplicates` returns.

    Returns:
        A new array, same shape (the removed slices are left as they were, to be sliced out).

    Example:

    ```python
    merge_outgoing(np.array([[1.0], [2.0], [3.0]]), 0, {2: 0})  # [[4.], [2.], [3.]]
    ```
    """
    merged = np.array(weight, copy=True)
    moved = np.moveaxis(merged, axis, 0)  # a view: writes land in `merged`
    for removed, target in merges.items():
        moved[target] += moved[removed]
    return merged


def geometric_median(vectors: np.ndarray, iterations: int = 100, tolerance: float = 1e-9) -> np.ndarray:
    """The point with the least summed Euclidean distance to the rows of `vectors` (Weiszfeld).

    Example:

    ```python
    geometric_median(np.array([[0.0], [1.0], [10.0]]))  # array([1.])
    ```
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    median = vectors.mean(axis=0)
    for _ in range(iterations):
        distances = np.linalg.norm(vectors - median, axis=1)
        at_row = distances < 1e-12
        if at_row.any():
            # The median sits on a data point; Weiszfeld's step is undefined there, and that
            # point is optimal when the pull of the others does not exceed the number sitting there.
            others = ~at_row
            pull = ((vectors[others] - median) / distances[others, None]).sum(axis=0)
            if np.linalg.norm(pull) <= at_row.sum():
                return median
            distances = np.where(at_row, 1e-12, distances)
        weights = 1.0 / distances
        updated = (weights[:, None] * vectors).sum(axis=0) / weights.sum()
        if np.linalg.norm(updated - median) <= tolerance * max(1.0, np.linalg.norm(median)):
            return updated
        median = updated
    return median


def fpgm_scores(vectors: np.ndarray) -> np.ndarray:
    """FPGM (He et al., 2019): each channel's distance to the geometric median of its group.

    Channels nearest the median are the ones the others can best stand in for; they score lowest
    and are removed first, whatever their norm.

    Args:
        vectors: `(channels, features)`: each channel's incoming weights.

    Returns:
        `(channels,)` float64 scores; higher means keep.

    Example:

    ```python
    fpgm_scores(np.array([[0.0], [1.0], [10.0]]))  # array([1., 0., 9.])
    ```
    """
    vectors = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    return np.linalg.norm(vectors - geometric_median(vectors), axis=1)
