import numpy as np
import pytest

from tfsparse.structured import redundancy


def _planted(channels=12, features=27, copies=(0, 3, 7), noise=0.01, seed=0):
    """`channels` random filters, then a noisy copy of each of `copies` appended after them."""
    rng = np.random.default_rng(seed)
    filters = rng.normal(size=(channels, features))
    duplicates = filters[list(copies)] + noise * rng.normal(size=(len(copies), features))
    return np.concatenate([filters, duplicates])


def test_simhash_puts_equal_vectors_together_and_opposite_ones_apart():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(5, 16))
    vectors = np.concatenate([vectors, vectors[:1] * 3.0, -vectors[:1]])
    codes = redundancy.simhash_codes(vectors, tables=3, bits=10, seed=4)
    assert codes.shape == (3, 7)
    np.testing.assert_array_equal(codes[:, 5], codes[:, 0])  # same direction, any scale
    np.testing.assert_array_equal(codes[:, 6], (2**10 - 1) - codes[:, 0])  # every bit flipped
    np.testing.assert_array_equal(redundancy.simhash_codes(vectors, 3, 10, seed=4), codes)
    assert not np.array_equal(redundancy.simhash_codes(vectors, 3, 10, seed=5), codes)


def test_near_duplicates_finds_exactly_the_planted_copies_and_their_originals():
    filters = _planted()
    assert redundancy.near_duplicates(filters, 3, seed=0) == {12: 0, 13: 3, 14: 7}


def test_near_duplicates_takes_the_most_similar_first():
    rng = np.random.default_rng(2)
    filters = rng.normal(size=(6, 20))
    noisy = [filters[1] + 0.2 * rng.normal(size=20), filters[2] + 0.001 * rng.normal(size=20)]
    filters = np.concatenate([filters, noisy])
    assert redundancy.near_duplicates(filters, 1) == {7: 2}
    assert redundancy.near_duplicates(filters, 2) == {6: 1, 7: 2}


def test_targets_stay_and_fixed_channels_are_never_removed():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(1, 8))
    filters = np.concatenate([base + 0.01 * rng.normal(size=(4, 8)), rng.normal(size=(6, 8))])
    fixed = np.zeros(10, dtype=bool)
    fixed[[1, 2]] = True
    merges = redundancy.near_duplicates(filters, 5, fixed=fixed)
    assert len(merges) == 5
    assert not set(merges) & set(merges.values())  # every channel merged into stays
    assert not set(merges) & {1, 2}


def test_near_duplicates_falls_back_to_coarser_buckets_to_reach_the_count():
    filters = np.random.default_rng(4).normal(size=(16, 32))  # no duplicates at all
    merges = redundancy.near_duplicates(filters, 8, bits=16)
    assert len(merges) == 8
    everything = redundancy.near_duplicates(filters, 40)  # all but one channel, at most
    assert len(everything) == 15 and len(set(everything.values())) == 1


def test_merging_keeps_the_next_layer_output_where_deleting_does_not():
    rng = np.random.default_rng(5)
    first = _planted(channels=10, features=6, copies=(2, 5), noise=0.0).T  # (6 in, 12 units)
    second = rng.normal(size=(12, 4))
    x = rng.normal(size=(50, 6))
    reference = np.maximum(x @ first, 0) @ second
    merges = redundancy.near_duplicates(first.T, 2)
    assert merges == {10: 2, 11: 5}
    keep = np.setdiff1d(np.arange(12), list(merges))
    merged = redundancy.merge_outgoing(second, 0, merges)[keep]
    deleted = second[keep]
    hidden = np.maximum(x @ first[:, keep], 0)
    np.testing.assert_allclose(hidden @ merged, reference, atol=1e-10)
    assert np.abs(hidden @ deleted - reference).mean() > 0.1


def test_geometric_median_minimises_the_summed_distance():
    rng = np.random.default_rng(6)
    points = rng.normal(size=(30, 3)) + [5.0, 0.0, 0.0]
    median = redundancy.geometric_median(points)

    def total(point):
        return np.linalg.norm(points - point, axis=1).sum()

    for _ in range(20):
        assert total(median) <= total(median + 0.01 * rng.normal(size=3)) + 1e-9
    assert total(median) < total(points.mean(axis=0)) or np.allclose(median, points.mean(axis=0))


def test_fpgm_removes_the_central_filters_where_l2_removes_the_small_ones():
    rng = np.random.default_rng(7)
    # A cluster far from the origin (large norms) and a few small outlying filters: the central
    # ones of the cluster are the replaceable ones, the small outliers are not.
    cluster = np.array([10.0, 0.0, 0.0, 0.0]) + rng.normal(size=(8, 4))
    outliers = 0.5 * np.eye(4)
    filters = np.concatenate([cluster, outliers])
    fpgm = np.argsort(redundancy.fpgm_scores(filters))[:4]
    l2 = np.argsort(np.linalg.norm(filters, axis=1))[:4]
    assert set(l2.tolist()) == {8, 9, 10, 11}
    assert set(fpgm.tolist()) <= set(range(8))


@pytest.mark.parametrize("count", [0, 1])
def test_near_duplicates_of_a_single_channel_removes_nothing(count):
    assert redundancy.near_duplicates(np.ones((1, 3)), count) == {}
