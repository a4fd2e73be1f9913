"""Channel importance per group: the numbers each criterion gives, and how plans use them."""

import keras
import numpy as np
import pytest

from tfsparse import structured

L = keras.layers


def _two_layer(seed=0):
    inputs = keras.Input((4,))
    x = L.Dense(6, name="hidden")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(x))
    rng = np.random.default_rng(seed)
    for layer in model.layers[1:]:
        layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    gamma, beta, mean, variance = model.get_layer("bn").get_weights()
    model.get_layer("bn").set_weights([gamma, beta, mean, np.abs(variance) + 0.5])
    return model


def _hidden_group(graph):
    return next(g for g in graph.groups if "hidden" in g.layers("out"))


def test_l1_and_l2_sum_every_trainable_weight_of_the_channel():
    model = _two_layer()
    graph = structured.DependencyGraph(model)
    group = _hidden_group(graph)
    kernel, bias = model.get_layer("hidden").get_weights()
    gamma, beta = model.get_layer("bn").get_weights()[:2]
    head = model.get_layer("head").get_weights()[0]
    parts = [kernel, bias[None], gamma[None], beta[None], head.T]
    l1 = sum(np.abs(p).sum(axis=0) for p in parts)
    l2 = np.sqrt(sum(np.square(p).sum(axis=0) for p in parts))
    np.testing.assert_allclose(structured.group_scores(model, graph, "l1")[group.index], l1, rtol=1e-6)
    np.testing.assert_allclose(structured.group_scores(model, graph, "l2")[group.index], l2, rtol=1e-6)
    assert set(structured.group_scores(model, graph, "l2")) == {g.index for g in graph.groups if g.prunable}


def test_bn_scale_is_gamma_and_lamp_is_comparable_across_groups():
    model = _two_layer()
    graph = structured.DependencyGraph(model)
    group = _hidden_group(graph)
    gamma = model.get_layer("bn").get_weights()[0]
    np.testing.assert_allclose(structured.group_scores(model, graph, "bn_scale")[group.index], np.abs(gamma))
    lamp = structured.group_scores(model, graph, "lamp")[group.index]
    assert lamp.max() == pytest.approx(1.0) and (lamp > 0).all()
    l2 = structured.group_scores(model, graph, "l2")[group.index]
    assert (np.argsort(lamp) == np.argsort(l2)).all()


def test_random_is_seeded_and_a_callable_is_used_as_given():
    model = _two_layer()
    graph = structured.DependencyGraph(model)
    first = structured.group_scores(model, graph, "random")
    second = structured.group_scores(model, graph, "random")
    assert all((first[g] == second[g]).all() for g in first)
    plan = structured.plan(model, ratio=0.5, importance=lambda model, group: -np.arange(group.channels))
    assert plan.removed[_hidden_group(graph).index] == [3, 4, 5]
    with pytest.raises(ValueError, match="returned 2 scores for group"):
        structured.plan(model, ratio=0.5, importance=lambda model, group: np.ones(2))


def test_taylor_uses_gradients_on_data_and_needs_data():
    model = _two_layer()
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(2).normal(size=(32, 3)).astype("float32")
    model.compile(loss="mse")
    graph = structured.DependencyGraph(model)
    scores = structured.group_scores(model, graph, "taylor", data=(x, y))[_hidden_group(graph).index]
    assert scores.shape == (6,) and (scores > 0).all()
    with pytest.raises(ValueError, match="needs.*data|data.*needed"):
        structured.group_scores(model, graph, "taylor")


def test_global_scope_ranks_groups_together_within_max_ratio():
    inputs = keras.Input((4,))
    x = L.Dense(16, name="big")(inputs)
    x = L.Dense(16, name="small")(x)
    model = keras.Model(inputs, L.Dense(2)(x))
    rng = np.random.default_rng(0)
    big, small = model.get_layer("big"), model.get_layer("small")
    big.set_weights([rng.normal(size=(4, 16)).astype("float32") * 10, np.zeros(16, "float32")])
    small.set_weights([rng.normal(size=(16, 16)).astype("float32"), np.zeros(16, "float32")])
    local = structured.plan(model, ratio=0.25, importance="l1")
    assert sorted(len(c) for c in local.removed.values()) == [4, 4]
    everywhere = structured.plan(model, ratio=0.25, importance="lamp", scope="global", max_ratio=0.5)
    assert sum(len(c) for c in everywhere.removed.values()) == 8
    assert all(len(c) <= 8 for c in everywhere.removed.values())


def test_round_to_and_per_layer_ratios():
    inputs = keras.Input((4,))
    x = L.Dense(24, name="a")(inputs)
    x = L.Dense(20, name="b")(x)
    model = keras.Model(inputs, L.Dense(2)(x))
    small = structured.prune(model, ratio=0.3, round_to=8)
    assert small.get_layer("a").units == 16 and small.get_layer("b").units == 16
    small = structured.prune(model, ratio={"a": 0.5})
    assert small.get_layer("a").units == 12 and small.get_layer("b").units == 20
