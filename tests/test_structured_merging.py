"""Importances "lsh" (near-duplicates merged into the channel they copy) and "fpgm" on real models."""

import keras
import numpy as np
import pytest

from tfsparse import structured

COPIES = {9: 1, 10: 4, 11: 7}  # planted copy -> original
NOISE = 1e-3


def _planted_model(noise=NOISE):
    """Conv(12) -> BN -> ReLU -> pool -> flatten -> Dense(4); filters 9-11 copy 1, 4, 7 plus noise."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(12, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    kernel = rng.normal(scale=0.3, size=(3, 3, 3, 12))
    kernel[..., [1, 4, 7]] *= 3.0  # the duplicated filters are the strong ones: magnitude keeps their copies
    bias = rng.normal(scale=0.1, size=12)
    bn = [rng.uniform(0.5, 1.5, 12), rng.normal(scale=0.1, size=12), rng.normal(scale=0.1, size=12)]
    bn.append(rng.uniform(0.5, 1.5, 12))
    for copy, original in COPIES.items():
        kernel[..., copy] = kernel[..., original] + noise * rng.normal(size=(3, 3, 3))
        bias[copy] = bias[original]
        for values in bn:
            values[copy] = values[original]
    model.get_layer("conv").set_weights([kernel, bias])
    model.get_layer("bn").set_weights(bn)
    head = model.get_layer("head")
    head.set_weights([rng.normal(scale=0.2, size=head.kernel.shape), np.zeros(4)])
    return model


def _x():
    return np.random.default_rng(1).normal(size=(64, 6, 6, 3)).astype("float32")


def _conv_group(model):
    graph = structured.DependencyGraph(model)
    return next(g for g in graph.groups if "conv" in g.layers("out"))


def _error(model, other):
    return float(np.abs(model.predict(_x(), verbose=0) - other.predict(_x(), verbose=0)).max())


def test_lsh_removes_exactly_the_planted_copies_and_merges_them_into_their_originals():
    model = _planted_model()
    plan = structured.plan(model, ratio={"conv": 0.25}, importance="lsh")
    group = _conv_group(model).index
    assert plan.removed == {group: [9, 10, 11]}
    assert plan.groups[group]["merged_into"] == [1, 4, 7]
    again = structured.Plan.from_json(plan.to_json())
    assert again.groups[group]["merged_into"] == [1, 4, 7]
    for a, b in zip(
        structured.apply(model, plan).get_weights(), structured.apply(model, again).get_weights()
    ):
        np.testing.assert_array_equal(a, b)


def test_merged_outputs_change_less_than_the_noise_did_and_far_less_than_deleting():
    model = _planted_model()
    exact = _planted_model(noise=0.0)
    noise_effect = _error(model, exact)  # how much the planted noise itself moves the outputs
    plan = structured.plan(model, ratio={"conv": 0.25}, importance="lsh")
    merged = structured.prune(model, ratio={"conv": 0.25}, importance="lsh")
    assert merged.get_layer("conv").filters == 9
    deleted = structured.apply(model, structured.Plan(plan.removed))  # same channels, no merging
    merged_error, deleted_error = _error(merged, model), _error(deleted, model)
    assert merged_error <= 1.05 * noise_effect
    assert merged_error < 0.01 * deleted_error


def test_magnitude_importance_does_not_find_the_copies():
    model = _planted_model()
    group = _conv_group(model).index
    for importance in ("l1", "l2"):
        plan = structured.plan(model, ratio={"conv": 0.25}, importance=importance)
        assert set(plan.removed[group]) != set(COPIES)
        assert _error(structured.apply(model, plan), model) > 10 * _error(
            structured.prune(model, ratio={"conv": 0.25}, importance="lsh"), model
        )


def test_fpgm_removes_the_replaceable_units_where_l2_removes_the_small_ones():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(12, name="hidden"), keras.layers.Dense(2)]
    )
    rng = np.random.default_rng(2)
    # Eight units in a cluster far from the origin and four small ones pointing elsewhere.
    cluster = np.array([4.0, 0.0, 0.0, 0.0]) + 0.5 * rng.normal(size=(8, 4))
    model.get_layer("hidden").set_weights([np.concatenate([cluster, 0.3 * np.eye(4)]).T, np.zeros(12)])
    group = next(g for g in structured.DependencyGraph(model).groups if "hidden" in g.layers("out")).index
    l2 = structured.plan(model, ratio={"hidden": 1 / 3}, importance="l2").removed[group]
    fpgm = structured.plan(model, ratio={"hidden": 1 / 3}, importance="fpgm").removed[group]
    assert l2 == [8, 9, 10, 11]
    assert len(fpgm) == 4 and set(fpgm) <= set(range(8))


@pytest.mark.parametrize("importance", ["lsh", "fpgm"])
def test_lsh_and_fpgm_prune_a_cnn_to_the_ratio_with_its_shapes(cnn, importance):
    small = structured.prune(cnn, ratio=0.5, importance=importance)
    conv = next(layer for layer in small.layers if isinstance(layer, keras.layers.Conv2D))
    dense = next(layer for layer in small.layers if isinstance(layer, keras.layers.Dense))
    assert conv.filters == 4 and dense.units == 16
    assert small.output_shape == cnn.output_shape
