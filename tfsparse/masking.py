"""From importance scores to binary masks: per layer, in blocks, m:n, or with one global threshold.

Pure numpy functions: scores in, masks (same shape, 0.0 or 1.0) out. The lowest scores are pruned
first; among equal scores the earlier position (C order) is pruned first, so masks are deterministic.
Infinite scores are valid (-inf marks weights already pruned); a NaN score cannot be ranked, and
every function here raises `ValueError` for it (callers name the layer and weight it came from).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BLOCK_POOLING_TYPES = ("AVG", "MAX")


def num_zeros(size: int, sparsity: float) -> int:
    """The number of weights set to zero in a weight of `size` elements at `sparsity`."""
    return min(size, int(round(sparsity * size)))


def count_nan(scores: np.ndarray) -> int:
    """The number of NaN values in `scores` (0 for integer arrays)."""
    scores = np.asarray(scores)
    return int(np.count_nonzero(np.isnan(scores))) if np.issubdtype(scores.dtype, np.inexact) else 0


def _refuse_nan(scores: np.ndarray) -> None:
    nans = count_nan(scores)
    if nans:
        raise ValueError(
            f"Scores contain {nans} NaN value(s) out of {np.asarray(scores).size}; a NaN score cannot be "
            "ranked. NaN scores come from NaN weights (a diverged model) or NaN calibration data."
        )


def _kth_lowest(values: np.ndarray, k: int):
    # Weights pruned earlier all score the same lowest value; numpy's partition slows down ten-fold
    # on such runs of equal values, so they are counted first and only the rest is partitioned.
    lowest = values.min()
    at_lowest = int(np.count_nonzero(values == lowest))
    if at_lowest >= k:
        return lowest
    rest = values[values > lowest]
    return np.partition(rest, k - at_lowest - 1)[k - at_lowest - 1]


def sparsity_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Mask with exactly `round(sparsity * scores.size)` zeros, at the lowest scores.

    Args:
        scores: importance scores of any shape; +-inf allowed.
        sparsity: the fraction to zero, in [0, 1].

    Returns:
        A float32 array of 0.0 and 1.0 shaped like `scores`.

    Raises:
        ValueError: if `scores` holds NaN.

    Example:

    ```python
    sparsity_mask(np.array([3.0, 1.0, 2.0, 4.0]), 0.5)  # array([1., 0., 0., 1.])
    ```
    """
    scores = np.asarray(scores)
    _refuse_nan(scores)
    flat = scores.ravel()
    zeros = num_zeros(flat.size, sparsity)
    mask = np.ones(flat.size, dtype=np.float32)
    if zeros > 0:
        # A partial sort finds the k-th lowest score in linear time (masks of large layers are
        # recomputed during training); equal scores at the threshold go in position order.
        threshold = _kth_lowest(flat, zeros)
        below = flat < threshold
        mask[below] = 0.0
        at_threshold = np.flatnonzero(flat == threshold)
        mask[at_threshold[: zeros - int(below.sum())]] = 0.0
    return mask.reshape(scores.shape)


def _as_matrix(scores: np.ndarray) -> np.ndarray:
    # Kernels of rank > 2 (convolutions) are blocked over (everything but the outputs, outputs).
    if scores.ndim == 2:
        return scores
    if scores.ndim < 2:
        return scores.reshape(1, -1)
    return scores.reshape(-1, scores.shape[-1])


def block_mask(
    scores: np.ndarray, sparsity: float, block_size: Sequence[int], block_pooling_type: str = "AVG"
) -> np.ndarray:
    """Mask that zeroes whole blocks: scores are pooled per block, the weakest blocks are removed.

    A kernel of rank > 2 is seen as a matrix of shape `(-1, outputs)`; blocks at the edges that are
    cut short are pooled over the part that exists. `round(sparsity * number_of_blocks)` blocks are
    zeroed. Under "AVG" pooling a block holding both -inf and +inf scores pools to -inf.

    Args:
        scores: importance scores; +-inf allowed.
        sparsity: the fraction of blocks to zero, in [0, 1].
        block_size: `(rows, cols)` of a block.
        block_pooling_type: "AVG" or "MAX".

    Returns:
        A float32 array of 0.0 and 1.0 shaped like `scores`.

    Raises:
        ValueError: if `scores` holds NaN.

    Example:

    ```python
    block_mask(np.arange(16.0).reshape(4, 4), 0.5, (2, 2))  # the two top 2x2 blocks are zeroed
    ```
    """
    block_rows, block_cols = (int(b) for b in block_size)
    scores = np.asarray(scores)
    if (block_rows, block_cols) == (1, 1):
        return sparsity_mask(scores, sparsity)
    _refuse_nan(scores)
    matrix = _as_matrix(scores)
    rows, cols = matrix.shape
    padded_rows = math.ceil(rows / block_rows) * block_rows
    padded_cols = math.ceil(cols / block_cols) * block_cols
    fill = np.nan
    padded = np.full((padded_rows, padded_cols), fill, dtype=np.float64)
    padded[:rows, :cols] = matrix
    blocks = padded.reshape(padded_rows // block_rows, block_rows, padded_cols // block_cols, block_cols)
    pool = np.nanmax if block_pooling_type == "MAX" else np.nanmean
    with np.errstate(invalid="ignore"):
        pooled = pool(blocks, axis=(1, 3))
    # The padding is NaN and ignored; a NaN left here is the mean of -inf and +inf.
    pooled[np.isnan(pooled)] = -np.inf
    kept_blocks = sparsity_mask(pooled, sparsity)
    expanded = np.repeat(np.repeat(kept_blocks, block_rows, axis=0), block_cols, axis=1)
    return expanded[:rows, :cols].reshape(scores.shape).astype(np.float32)


def m_by_n_mask(scores: np.ndarray, m: int, n: int, axis: int = -2) -> np.ndarray:
    """Mask that keeps the `m` highest scores of every `n` consecutive ones along `axis`.

    `axis` is the input dimension of the kernel (-2 for Dense and convolution kernels; a rank-1
    weight uses its only axis). A trailing group shorter than `n` keeps its `min(m, len)` best.
    Ties go to the earlier position (it is pruned first).

    Args:
        scores: importance scores; +-inf allowed.
        m: how many to keep in each group.
        n: the group length.
        axis: the axis the groups run along.

    Returns:
        A float32 array of 0.0 and 1.0 shaped like `scores`.

    Raises:
        ValueError: if `scores` holds NaN.

    Example:

    ```python
    m_by_n_mask(np.array([[4.0], [1.0], [3.0], [2.0]]), 2, 4)  # [[1], [0], [1], [0]]
    ```
    """
    scores = np.asarray(scores)
    _refuse_nan(scores)
    if scores.ndim == 1:
        axis = 0
    moved = np.moveaxis(scores, axis, -1)
    length = moved.shape[-1]
    mask = np.ones_like(moved, dtype=np.float32)
    for start in range(0, length, n):
        group = moved[..., start : start + n]
        drop = group.shape[-1] - min(m, group.shape[-1])
        if drop == 0:
            continue
        lowest = np.argsort(group, axis=-1, kind="stable")[..., :drop]
        group_mask = np.ones_like(group, dtype=np.float32)
        np.put_along_axis(group_mask, lowest, 0.0, axis=-1)
        mask[..., start : start + n] = group_mask
    return np.moveaxis(mask, -1, axis)


def global_masks(
    scores: Sequence[np.ndarray], sparsity: float, min_density: float | Sequence[float] = 0.0
) -> list[np.ndarray]:
    """Masks for several weights from one threshold shared by all of them.

    In all, `round(sparsity * total_size)` weights are zeroed, the lowest scores across every weight
    first, so that layers end up with different sparsities. Each weight keeps at least
    `ceil(min_density * size)` of its weights, so that no layer is cut off; when that floor makes
    the total unreachable, as many weights as the floors allow are zeroed. `min_density` is one
    value for all weights or one per weight.

    Args:
        scores: one array of scores per weight; +-inf allowed.
        sparsity: the fraction of all weights together to zero, in [0, 1].
        min_density: the share of each weight always kept, in [0, 1].

    Returns:
        One float32 mask of 0.0 and 1.0 per weight, shaped like its scores.

    Raises:
        ValueError: if any of `scores` holds NaN.

    Example:

    ```python
    global_masks([np.array([1.0, 2.0]), np.array([3.0, 0.5])], 0.5)  # [[0, 1], [1, 0]]
    ```
    """
    scores = [np.asarray(s) for s in scores]
    for s in scores:
        _refuse_nan(s)
    sizes = [s.size for s in scores]
    flat = np.concatenate([s.ravel().astype(np.float64) for s in scores]) if scores else np.zeros(0)
    owner = np.repeat(np.arange(len(scores)), sizes)
    order = np.argsort(flat, kind="stable")
    # Rank of each candidate within its own weight, in increasing score order.
    rank_in_owner = np.empty_like(order)
    for index in range(len(scores)):
        positions = np.flatnonzero(owner[order] == index)
        rank_in_owner[positions] = np.arange(positions.size)
    densities = [min_density] * len(sizes) if np.isscalar(min_density) else list(min_density)
    caps = np.array([size - math.ceil(d * size) for size, d in zip(sizes, densities)], dtype=np.int64)
    eligible = order[rank_in_owner < caps[owner[order]]]
    zeroed = eligible[: num_zeros(flat.size, sparsity)]
    mask = np.ones(flat.size, dtype=np.float32)
    mask[zeroed] = 0.0
    pieces = np.split(mask, np.cumsum(sizes)[:-1]) if scores else []
    return [piece.reshape(s.shape) for piece, s in zip(pieces, scores)]
