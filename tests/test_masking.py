import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfsparse import mask_updates, masking


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.73, 0.9, 0.99])
@pytest.mark.parametrize("shape", [(7,), (16, 10), (3, 3, 4, 5)])
def test_sparsity_mask_zeroes_exactly_round_s_times_n_of_the_lowest_scores(shape, sparsity):
    scores = np.random.default_rng(1).random(shape)
    mask = masking.sparsity_mask(scores, sparsity)
    zeros = int((mask == 0).sum())
    assert zeros == round(sparsity * scores.size)
    if 0 < zeros < scores.size:
        assert scores[mask == 0].max() <= scores[mask == 1].min()


def test_ties_are_broken_by_position_deterministically():
    scores = np.ones((4, 4))
    first = masking.sparsity_mask(scores, 0.5)
    assert (first.ravel()[:8] == 0).all() and (first.ravel()[8:] == 1).all()
    np.testing.assert_array_equal(first, masking.sparsity_mask(scores.copy(), 0.5))


def test_block_mask_removes_whole_blocks_with_the_lowest_average():
    scores = np.arange(16.0).reshape(4, 4)
    mask = masking.block_mask(scores, 0.5, (2, 2))
    np.testing.assert_array_equal(mask[:2], 0)
    np.testing.assert_array_equal(mask[2:], 1)


def test_block_mask_max_pooling_and_ragged_edges():
    scores = np.zeros((3, 5))
    scores[0, 0] = 10.0  # one large weight keeps its whole block under MAX pooling
    mask = masking.block_mask(scores, 0.5, (2, 2), "MAX")
    assert mask.shape == (3, 5)
    assert mask[0, 0] == 1 and mask[1, 1] == 1
    blocks_kept = mask[::2, ::2].sum()
    assert blocks_kept == 6 - round(0.5 * 6)


def test_block_mask_on_a_convolution_kernel_blocks_over_inputs_and_outputs():
    scores = np.random.default_rng(0).random((3, 3, 4, 8))
    mask = masking.block_mask(scores, 0.5, (1, 4))
    matrix = mask.reshape(-1, 8)
    for row in matrix:
        assert set(row[:4]) in ({0.0}, {1.0}) and set(row[4:]) in ({0.0}, {1.0})
    assert matrix.mean() == pytest.approx(0.5)


def test_two_of_four_keeps_the_two_largest_of_every_four_along_the_input_dimension():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(16, 6))
    mask = masking.m_by_n_mask(np.abs(kernel), 2, 4)
    groups = mask.reshape(4, 4, 6)
    assert (groups.sum(axis=1) == 2).all()
    magnitudes = np.abs(kernel).reshape(4, 4, 6)
    assert (
        np.where(groups == 1, magnitudes, np.inf).min(axis=1)
        >= np.where(groups == 0, magnitudes, -np.inf).max(axis=1)
    ).all()


def test_m_by_n_on_a_conv_kernel_groups_input_channels_and_handles_a_short_tail():
    scores = np.random.default_rng(0).random((3, 3, 6, 2))
    mask = masking.m_by_n_mask(scores, 2, 4)
    assert (mask[:, :, :4].sum(axis=2) == 2).all()
    assert (mask[:, :, 4:].sum(axis=2) == 2).all()  # a tail of two keeps both


def test_global_masks_reach_the_total_with_different_per_layer_sparsities():
    rng = np.random.default_rng(0)
    small = rng.normal(scale=0.1, size=(50,))
    large = rng.normal(scale=1.0, size=(150,))
    masks = masking.global_masks([np.abs(small), np.abs(large)], 0.6)
    zeros = [(m == 0).sum() for m in masks]
    assert sum(zeros) == round(0.6 * 200)
    assert zeros[0] / 50 > zeros[1] / 150


def test_global_masks_keep_the_minimum_density_of_every_layer():
    masks = masking.global_masks([np.full(10, 0.01), np.full(10, 5.0)], 0.5, min_density=0.3)
    assert masks[0].sum() == 3
    assert (masks[0] == 0).sum() + (masks[1] == 0).sum() == 10


def test_sparsity_mask_equals_a_stable_sort_reference_with_many_equal_scores():
    rng = np.random.default_rng(3)
    scores = np.where(rng.random(5000) < 0.5, 0.0, np.round(rng.random(5000), 2))
    for sparsity in (0.3, 0.5, 0.7, 0.95):
        reference = np.ones(5000, dtype=np.float32)
        reference[np.argsort(scores, kind="stable")[: round(sparsity * 5000)]] = 0.0
        np.testing.assert_array_equal(masking.sparsity_mask(scores, sparsity), reference)


@pytest.mark.parametrize(
    "make_mask",
    [
        lambda s: masking.sparsity_mask(s, 0.5),
        lambda s: masking.block_mask(s, 0.5, (2, 2)),
        lambda s: masking.m_by_n_mask(s, 2, 4),
        lambda s: masking.global_masks([s, np.ones(3)], 0.5),
    ],
    ids=["layer", "block", "m_by_n", "global"],
)
def test_nan_scores_raise_value_error_instead_of_an_index_error(make_mask):
    scores = np.arange(16.0).reshape(4, 4)
    scores[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 NaN value"):
        make_mask(scores)


def test_infinite_scores_are_ranked_like_any_other():
    scores = np.array([np.inf, 1.0, -np.inf, 2.0, np.inf, 0.5])
    np.testing.assert_array_equal(masking.sparsity_mask(scores, 0.5), [1, 0, 0, 1, 1, 0])
    # A block of one pruned (-inf) and one huge (+inf) weight pools to -inf, not NaN.
    mixed = np.array([[-np.inf, np.inf, 3.0, 4.0]])
    np.testing.assert_array_equal(masking.block_mask(mixed, 0.5, (1, 2)), [[0, 0, 1, 1]])


# -- properties over generated inputs (Hypothesis) -------------------------------------------------


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _weight_shapes(draw):
    """1 to 4 dimensions of 1 to 64, at most 4096 elements in all (masks of any size behave alike)."""
    shape = []
    for _ in range(draw(st.integers(1, 4))):
        room = 4096 // max(int(np.prod(shape)) if shape else 1, 1)
        shape.append(draw(st.integers(1, max(1, min(64, room)))))
    return tuple(shape)


# Ties, zeros, signs and infinities on purpose; NaN now and then.
_SCORE_VALUES = st.one_of(
    st.sampled_from([0.0, 0.0, 1.0, 1.0, -1.0, 0.5, np.inf, -np.inf]),
    st.floats(-1e6, 1e6),
    st.just(np.nan),
)


@st.composite
def _mask_cases(draw):
    shape = draw(_weight_shapes())
    scores = draw(hnp.arrays(np.float64, shape, elements=_SCORE_VALUES))
    pattern = draw(st.sampled_from(["layer", "block", "m_by_n"]))
    matrix_shape = masking._as_matrix(np.zeros(shape)).shape
    block = (draw(st.integers(1, matrix_shape[0])), draw(st.integers(1, matrix_shape[1])))
    n = draw(st.integers(2, 8))
    return {
        "scores": scores,
        "sparsity": draw(st.floats(0.0, 1.0, exclude_max=True)),
        "pattern": pattern,
        "block": block,
        "pooling": draw(st.sampled_from(masking.BLOCK_POOLING_TYPES)),
        "m_by_n": (draw(st.integers(1, n - 1)), n),
    }


def _mask_for(case):
    if case["pattern"] == "layer":
        return masking.sparsity_mask(case["scores"], case["sparsity"])
    if case["pattern"] == "block":
        return masking.block_mask(case["scores"], case["sparsity"], case["block"], case["pooling"])
    return masking.m_by_n_mask(case["scores"], *case["m_by_n"])


@PROPERTY_SETTINGS
@given(_mask_cases())
def test_masks_have_the_documented_number_of_zeros_are_deterministic_and_refuse_only_nan(case):
    scores = case["scores"]
    if np.isnan(scores).any():
        with pytest.raises(ValueError, match="NaN"):
            _mask_for(case)
        return
    mask = _mask_for(case)
    assert mask.shape == scores.shape and set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, _mask_for(case))  # deterministic
    zeros = int((mask == 0).sum())
    if case["pattern"] == "layer":
        assert zeros == round(case["sparsity"] * scores.size)
        if 0 < zeros < scores.size:
            assert scores[mask == 0].max() <= scores[mask == 1].min()
    elif case["pattern"] == "block":
        rows, cols = case["block"]
        matrix = masking._as_matrix(mask)
        grid = [
            matrix[r : r + rows, c : c + cols]
            for r in range(0, matrix.shape[0], rows)
            for c in range(0, matrix.shape[1], cols)
        ]
        assert all(block.min() == block.max() for block in grid)  # whole blocks only
        assert sum(block.max() == 0 for block in grid) == round(case["sparsity"] * len(grid))
    else:
        m, n = case["m_by_n"]
        axis = 0 if scores.ndim == 1 else scores.ndim - 2
        length = scores.shape[axis]
        per_line = sum(max(0, min(n, length - start) - m) for start in range(0, length, n))
        assert zeros == per_line * (scores.size // length)


@st.composite
def _global_cases(draw):
    sizes = draw(st.lists(st.integers(1, 300), min_size=1, max_size=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scales = [10.0 ** draw(st.floats(-4, 4)) for _ in sizes]
    scores = [np.abs(rng.normal(size=size)) * scale for size, scale in zip(sizes, scales)]
    return scores, draw(st.floats(0.0, 1.0, exclude_max=True))


@PROPERTY_SETTINGS
@given(_global_cases())
def test_global_masks_meet_the_total_within_one_weight_and_keep_every_layer_alive(case):
    scores, sparsity = case
    # The floor that scope "global" applies by default (`min_density=None`).
    floor = mask_updates.default_min_density(sparsity)
    masks = masking.global_masks(scores, sparsity, min_density=floor)
    total = sum(s.size for s in scores)
    kept_at_least = [math.ceil(floor * s.size) for s in scores]
    reachable = total - sum(kept_at_least)
    zeros = sum(int((m == 0).sum()) for m in masks)
    assert zeros == min(masking.num_zeros(total, sparsity), reachable)
    if masking.num_zeros(total, sparsity) <= reachable:
        assert abs(zeros - sparsity * total) <= 1
    assert all(int(m.sum()) >= keep >= 1 for m, keep in zip(masks, kept_at_least))
