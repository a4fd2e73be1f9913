"""The masks of `tfsparse.masking`, computed with `keras.ops` where the weights live (no host copy).

Same semantics as the numpy functions there: the lowest scores are pruned first, equal scores in
C-order position first; `-inf` and `+inf` are valid scores, a NaN score raises `ValueError`. Ties are
broken without a stable sort (TensorFlow's and numpy's argsort are not stable): the k-th lowest score
is found by sorting the values, and the weights equal to it are taken in position order with a
cumulative sum. Masks come back as float tensors of 0.0 and 1.0 on the weights' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from tfsparse.masking import num_zeros


def on_accelerator(variable) -> bool:
    """Whether a Keras variable lives on an accelerator (GPU, TPU) rather than on the host CPU.

    On the CPU, numpy already computes where the weights live, and faster than eager `keras.ops`
    (sorting and many small dispatched ops); mask updates use this module only off the CPU.
    """
    value = variable.value
    devices = getattr(value, "devices", None)
    if callable(devices):  # a JAX array (possibly sharded over several devices of one platform)
        return next(iter(devices())).platform != "cpu"
    return "cpu" not in str(getattr(value, "device", "cpu")).lower()  # TensorFlow and PyTorch


def count_nan(scores) -> int:
    """The number of NaN values in a tensor of scores (one scalar read back to the host)."""
    return int(ops.convert_to_numpy(ops.sum(ops.cast(ops.isnan(scores), "int32"))))


def _refuse_nan(scores) -> None:
    nans = count_nan(scores)
    if nans:
        raise ValueError(
            f"Scores contain {nans} NaN value(s) out of {math.prod(scores.shape)}; a NaN score cannot be "
            "ranked. NaN scores come from NaN weights (a diverged model) or NaN calibration data."
        )


def _lowest(flat, count, eligible=None):
    """Boolean vector marking the `count` lowest of `flat` (among `eligible`), earlier ones first on ties.

    `count` may be a Python int or an integer tensor no larger than the number of eligible values.
    """
    if eligible is None:
        eligible = ops.ones_like(flat, dtype="bool")
    candidates = ops.where(eligible, flat, ops.cast(float("inf"), flat.dtype))
    # The count-th lowest eligible score; ineligible values sort last as +inf and are never taken.
    threshold = ops.take(ops.sort(candidates), ops.maximum(count - 1, 0))
    below = ops.logical_and(eligible, ops.less(flat, threshold))
    at_threshold = ops.logical_and(eligible, ops.equal(flat, threshold))
    still_needed = count - ops.sum(ops.cast(below, "int32"))
    first_at_threshold = ops.less_equal(ops.cumsum(ops.cast(at_threshold, "int32")), still_needed)
    chosen = ops.logical_or(below, ops.logical_and(at_threshold, first_at_threshold))
    return ops.logical_and(chosen, ops.greater(count, 0))


def sparsity_mask(scores, sparsity: float):
    """Mask with exactly `round(sparsity * size)` zeros at the lowest scores, as `masking.sparsity_mask`.

    Args:
        scores: a tensor (or array) of scores of any shape; +-inf allowed, NaN refused.
        sparsity: the fraction to zero, in [0, 1].

    Returns:
        A float32 tensor of 0.0 and 1.0 shaped like `scores`.

    Example:

    ```python
    sparsity_mask(keras.ops.convert_to_tensor([3.0, 1.0, 2.0, 4.0]), 0.5)  # [1., 0., 0., 1.]
    ```
    """
    scores = ops.convert_to_tensor(scores)
    _refuse_nan(scores)
    flat = ops.reshape(scores, (-1,))
    zeros = num_zeros(int(flat.shape[0]), sparsity)
    if zeros == 0:
        return ops.ones(scores.shape, dtype="float32")
    pruned = _lowest(flat, zeros)
    return ops.reshape(ops.cast(ops.logical_not(pruned), "float32"), scores.shape)


def block_mask(scores, sparsity: float, block_size: Sequence[int], block_pooling_type: str = "AVG"):
    """Mask that zeroes the weakest whole blocks, as `masking.block_mask` (ragged edges pooled as they are).

    Args:
        scores: scores of a weight; rank > 2 is seen as a matrix `(-1, outputs)`.
        sparsity: the fraction of blocks to zero.
        block_size: `(rows, cols)` of a block.
        block_pooling_type: "AVG" or "MAX".

    Returns:
        A float32 tensor of 0.0 and 1.0 shaped like `scores`.

    Example:

    ```python
    block_mask(keras.ops.reshape(keras.ops.arange(16.0), (4, 4)), 0.5, (2, 2))  # top blocks zeroed
    ```
    """
    block_rows, block_cols = (int(b) for b in block_size)
    if (block_rows, block_cols) == (1, 1):
        return sparsity_mask(scores, sparsity)
    scores = ops.convert_to_tensor(scores)
    _refuse_nan(scores)
    shape = tuple(scores.shape)
    matrix = ops.reshape(scores, (1, -1) if len(shape) < 2 else (-1, shape[-1]))
    rows, cols = (int(d) for d in matrix.shape)
    block_grid = (math.ceil(rows / block_rows), math.ceil(cols / block_cols))
    padding = [(0, block_grid[0] * block_rows - rows), (0, block_grid[1] * block_cols - cols)]
    blocked = (block_grid[0], block_rows, block_grid[1], block_cols)
    if block_pooling_type == "MAX":
        padded = ops.pad(matrix, padding, constant_values=float("-inf"))
        pooled = ops.max(ops.reshape(padded, blocked), axis=(1, 3))
    else:
        # The mean over the part of each edge block that exists, as numpy's nanmean of a NaN padding.
        total = ops.sum(ops.reshape(ops.pad(matrix, padding), blocked), axis=(1, 3))
        present = ops.sum(ops.reshape(ops.pad(ops.ones_like(matrix), padding), blocked), axis=(1, 3))
        pooled = total / present
    kept_blocks = sparsity_mask(pooled, sparsity)
    expanded = ops.repeat(ops.repeat(kept_blocks, block_rows, axis=0), block_cols, axis=1)
    return ops.reshape(expanded[:rows, :cols], shape)


def m_by_n_mask(scores, m: int, n: int, axis: int = -2):
    """Mask that keeps the `m` highest of every `n` consecutive scores along `axis`, as `masking.m_by_n_mask`.

    Args:
        scores: scores of a weight; a rank-1 weight uses its only axis.
        m: scores kept per group.
        n: the group length; a trailing group shorter than `n` keeps its `min(m, length)` best.
        axis: the input axis of the kernel.

    Returns:
        A float32 tensor of 0.0 and 1.0 shaped like `scores`.

    Example:

    ```python
    m_by_n_mask(keras.ops.convert_to_tensor([[4.0], [1.0], [3.0], [2.0]]), 2, 4)  # [[1], [0], [1], [0]]
    ```
    """
    scores = ops.convert_to_tensor(scores)
    _refuse_nan(scores)
    if len(scores.shape) == 1:
        axis = 0
    moved = ops.moveaxis(scores, axis, -1)
    length = int(moved.shape[-1])
    groups = math.ceil(length / n)
    tail = length - (groups - 1) * n
    padding = [(0, 0)] * (len(moved.shape) - 1) + [(0, groups * n - length)]
    # Padding scores +inf rank after every real score (ties go by position, and they come last).
    padded = ops.pad(moved, padding, constant_values=float("inf"))
    grouped = ops.reshape(padded, (*moved.shape[:-1], groups, n))
    # Rank in the group: how many score lower, plus how many earlier ones score the same.
    mine, theirs = ops.expand_dims(grouped, -1), ops.expand_dims(grouped, -2)
    earlier = ops.convert_to_tensor([[j < i for j in range(n)] for i in range(n)])
    rank = ops.sum(
        ops.cast(
            ops.logical_or(ops.less(theirs, mine), ops.logical_and(ops.equal(theirs, mine), earlier)), "int32"
        ),
        axis=-1,
    )
    drop = ops.convert_to_tensor([n - m] * (groups - 1) + [tail - min(m, tail)], dtype="int32")
    kept = ops.cast(ops.greater_equal(rank, ops.expand_dims(drop, -1)), "float32")
    kept = ops.reshape(kept, (*moved.shape[:-1], groups * n))[..., :length]
    return ops.moveaxis(kept, -1, axis)


def global_masks(scores: Sequence, sparsity: float, min_density: float | Sequence[float] = 0.0) -> list:
    """Masks for several weights from one shared threshold, as `masking.global_masks`.

    Args:
        scores: one tensor of scores per weight.
        sparsity: the fraction of all their weights to zero.
        min_density: the share of each weight always kept: one value, or one per weight.

    Returns:
        One float32 tensor of 0.0 and 1.0 per weight, shaped like its scores.

    Example:

    ```python
    global_masks([keras.ops.convert_to_tensor([1.0, 2.0]), keras.ops.convert_to_tensor([3.0, 0.5])], 0.5)
    # [[0, 1], [1, 0]]
    ```
    """
    scores = [ops.convert_to_tensor(s) for s in scores]
    if not scores:
        return []
    for s in scores:
        _refuse_nan(s)
    sizes = [math.prod(s.shape) for s in scores]
    densities = [min_density] * len(sizes) if isinstance(min_density, int | float) else list(min_density)
    caps = [size - math.ceil(d * size) for size, d in zip(sizes, densities)]
    flats = [ops.reshape(ops.cast(s, "float32"), (-1,)) for s in scores]
    # Each weight offers at most its cap, its lowest scores first; the lowest offers go.
    eligible = [
        _lowest(flat, cap) if cap < size else ops.ones_like(flat, dtype="bool")
        for flat, cap, size in zip(flats, caps, sizes)
    ]
    flat, eligible = ops.concatenate(flats), ops.concatenate(eligible)
    zeros = min(num_zeros(sum(sizes), sparsity), sum(min(cap, size) for cap, size in zip(caps, sizes)))
    pruned = _lowest(flat, zeros, eligible) if zeros else ops.zeros_like(eligible)
    mask = ops.cast(ops.logical_not(pruned), "float32")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [ops.reshape(mask[start : start + size], s.shape) for start, size, s in zip(starts, sizes, scores)]
