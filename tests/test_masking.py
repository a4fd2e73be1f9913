import numpy as np
import pytest

from tfsparse import masking


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
