"""The keras.ops masks agree with the numpy ones in `tfsparse.masking`, ties and infinities included."""

import numpy as np
import pytest
from conftest import make_mlp
from keras import ops

import tfsparse
from tfsparse import device_masking, masking
from tfsparse.mask_updates import collect_wrappers, layer_masks, prune_to
from tfsparse.wrapper import PruneLowMagnitude


def _scores(shape, seed, ties):
    rng = np.random.default_rng(seed)
    if ties:
        # Few distinct values (and pruned weights at -inf): most decisions are tie-breaks.
        values = rng.integers(0, 4, size=shape).astype("float32")
        values[rng.random(shape) < 0.2] = -np.inf
        return values
    return rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(7,), (12, 10), (3, 3, 4, 6)])
def test_sparsity_mask_on_the_device_equals_the_numpy_mask(shape, ties):
    scores = _scores(shape, 1, ties)
    for sparsity in (0.0, 0.3, 0.5, 0.9, 1.0):
        expected = masking.sparsity_mask(scores, sparsity)
        got = ops.convert_to_numpy(device_masking.sparsity_mask(ops.convert_to_tensor(scores), sparsity))
        np.testing.assert_array_equal(got, expected)
        assert (got == 0).sum() == round(sparsity * scores.size)


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
@pytest.mark.parametrize("block_size", [(2, 2), (3, 4), (1, 4)])
def test_block_mask_on_the_device_equals_the_numpy_mask_with_ragged_edges(block_size, pooling):
    for shape in [(10, 9), (3, 3, 5, 7)]:
        scores = _scores(shape, 2, ties=True)
        scores[scores == -np.inf] = 0.0  # -inf inside an average block is only a tie of -inf blocks
        expected = masking.block_mask(scores, 0.6, block_size, pooling)
        got = device_masking.block_mask(ops.convert_to_tensor(scores), 0.6, block_size, pooling)
        np.testing.assert_array_equal(ops.convert_to_numpy(got), expected)


@pytest.mark.parametrize("m, n", [(2, 4), (1, 3), (3, 8)])
def test_m_by_n_mask_on_the_device_equals_the_numpy_mask_with_a_short_tail(m, n):
    for shape, axis in [((10, 6), -2), ((3, 3, 11, 4), -2), ((9,), -2), ((5, 10), -1)]:
        scores = _scores(shape, 3, ties=True)
        expected = masking.m_by_n_mask(scores, m, n, axis=axis)
        got = device_masking.m_by_n_mask(ops.convert_to_tensor(scores), m, n, axis=axis)
        np.testing.assert_array_equal(ops.convert_to_numpy(got), expected)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("min_density", [0.0, 0.3, [0.0, 0.5, 0.9]])
def test_global_masks_on_the_device_equal_the_numpy_masks(min_density, ties):
    scores = [_scores((6, 5), 4, ties), _scores((12,), 5, ties), _scores((2, 2, 3), 6, ties)]
    for sparsity in (0.2, 0.7, 0.95):
        expected = masking.global_masks(scores, sparsity, min_density=min_density)
        got = device_masking.global_masks([ops.convert_to_tensor(s) for s in scores], sparsity, min_density)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(ops.convert_to_numpy(g), e)


@pytest.mark.parametrize(
    "make_mask",
    [
        lambda s: device_masking.sparsity_mask(s, 0.5),
        lambda s: device_masking.block_mask(s, 0.5, (2, 2)),
        lambda s: device_masking.m_by_n_mask(s, 2, 4),
        lambda s: device_masking.global_masks([s], 0.5)[0],
    ],
)
def test_nan_scores_are_refused_and_infinite_scores_are_ranked(make_mask):
    scores = np.array([[1.0, np.inf], [5.0, 2.0], [-np.inf, 3.0], [4.0, 0.1]], dtype="float32")
    mask = ops.convert_to_numpy(make_mask(ops.convert_to_tensor(scores)))  # +-inf are valid scores
    assert mask[0, 1] == 1.0 and mask[2, 0] == 0.0
    scores[1, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN value"):
        make_mask(ops.convert_to_tensor(scores))


@pytest.mark.parametrize(
    "options",
    [{}, {"scope": "global", "min_density": 0.2}, {"sparsity_m_by_n": (2, 4)}, {"block_size": (2, 2)}],
    ids=["layer", "global", "m_by_n", "blocks"],
)
def test_magnitude_mask_updates_never_copy_weights_or_masks_to_the_host(options, monkeypatch):
    pruned = tfsparse.prune_low_magnitude(make_mlp(), tfsparse.ConstantSparsity(0.6, 0), **options)
    wrappers = collect_wrappers(pruned)
    kernels = [np.abs(w.get_pruned_weight_values()[0]) for w in wrappers]
    if options.get("scope") == "global":
        expected = masking.global_masks(kernels, 0.6, min_density=0.2)
    else:
        expected = [layer_masks(w, [k], 0.6)[0] for w, k in zip(wrappers, kernels)]

    def host_copy(self):
        raise AssertionError("a mask update read weights or masks back to the host")

    with monkeypatch.context() as patch:
        # The CPU takes the numpy path (faster there); here the weights pretend to be on a GPU.
        patch.setattr(device_masking, "on_accelerator", lambda variable: True)
        patch.setattr(PruneLowMagnitude, "get_pruned_weight_values", host_copy)
        patch.setattr(PruneLowMagnitude, "get_masks", host_copy)
        prune_to(wrappers, lambda wrapper: 0.6)
    for wrapper, mask in zip(wrappers, expected):
        np.testing.assert_array_equal(wrapper.get_masks()[0], mask)
        assert (wrapper.get_pruned_weight_values()[0][mask == 0] == 0).all()


def test_weights_on_the_cpu_are_not_taken_for_an_accelerator():
    pruned = tfsparse.prune_low_magnitude(make_mlp(), tfsparse.ConstantSparsity(0.5, 0))
    assert not device_masking.on_accelerator(collect_wrappers(pruned)[0].pruned_weights[0])
