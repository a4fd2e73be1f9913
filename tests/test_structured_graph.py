"""The dependency graph on hand-built models: each coupling, checked by removing channels that carry nothing.

The check used throughout: pick channels at random, silence them in the original model (zero every
weight that produces them), prune them, and compare outputs. If any coupling or slice were wrong, the
pruned model would read the wrong channels and the outputs would differ.
"""

import keras
import numpy as np
import pytest

from tfsparse import structured

L = keras.layers


def _x(model, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [tuple(t.shape) for t in model.inputs]
    arrays = []
    for tensor, shape in zip(model.inputs, shapes):
        if "int" in str(tensor.dtype):
            arrays.append(rng.integers(0, 20, size=(3, *shape[1:])).astype("int32"))
        else:
            arrays.append(rng.normal(size=(3, *shape[1:])).astype("float32"))
    return arrays[0] if len(arrays) == 1 else arrays


def _silence(model, graph, plan):
    """The model's weights with every removed channel's producing weights zeroed (input axes kept)."""
    keep = graph.keep_function(plan.removed)
    layers = structured.surgery.leaf_layers(model)
    for path, record in graph.layers.items():
        if path not in layers or not record.slices:
            continue
        reading = [space.atoms for space in record.spaces.values() if space.kind == "in"]
        reading = set(np.concatenate(reading).tolist()) if reading else set()
        values = layers[path].get_weights()
        for s in record.slices:
            if set(s.atoms.tolist()) & reading or s.name in ("moving_mean", "moving_variance"):
                continue
            gone = ~keep(s.atoms)
            index = [slice(None)] * values[s.index].ndim
            index[s.axis] = gone
            values[s.index][tuple(index)] = 0
        layers[path].set_weights(values)


def _check_removal_is_exact(model, ratio=0.5, min_removed=1, **arguments):
    """Prunes random channels that carry nothing; outputs must not change."""
    graph = structured.DependencyGraph(model, ignored_layers=arguments.get("ignored_layers", ()))
    plan = structured.plan(model, ratio=ratio, importance="random", **arguments)
    assert plan.channels_removed >= min_removed
    small = structured.apply(model, plan)
    _silence(model, graph, plan)
    x = _x(model)
    expected = keras.tree.map_structure(np.asarray, model(x))
    got = keras.tree.map_structure(np.asarray, small(x))
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4), expected, got
    )
    assert small.count_params() < model.count_params()
    return graph, plan, small


def _group_of(graph, layer, kind="out"):
    return next(g for g in graph.groups if any(m.layer == layer and m.kind == kind for m in g.members))


def test_residual_add_puts_both_branches_and_their_batch_norms_in_one_group():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    a = L.BatchNormalization(name="bn_a")(a)
    b = L.Conv2D(8, 1, name="b")(inputs)
    x = L.ReLU()(L.Add(name="add")([a, b]))
    x = L.Conv2D(6, 3, name="c")(x)
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    graph, _, small = _check_removal_is_exact(model)
    group = _group_of(graph, "a")
    assert set(group.layers("out")) == {"a", "b"} and group.layers("norm") == ["bn_a"]
    assert "c" in group.layers("in") and "add" in group.layers("merge")
    assert (
        small.get_layer("a").filters
        == small.get_layer("b").filters
        == small.get_layer("c").kernel.shape[2]
        == 4
    )
    assert "group" in str(graph) and graph.to_dict()["groups"][group.index]["channels"] == 8


def test_concatenate_maps_each_branch_to_its_own_offset():
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 1, activation="relu", name="a")(inputs)
    b = L.Conv2D(6, 3, padding="same", activation="relu", name="b")(inputs)
    x = L.Concatenate(name="cat")([a, b])
    x = L.Conv2D(5, 1, name="c")(x)
    model = keras.Model(inputs, L.Flatten()(x))
    graph, plan, small = _check_removal_is_exact(model)
    assert _group_of(graph, "a").index != _group_of(graph, "b").index
    assert small.get_layer("c").kernel.shape[2] == small.get_layer("a").filters + small.get_layer("b").filters


def test_depthwise_and_separable_follow_their_inputs():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="a")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2, name="sep")(x)
    x = L.Conv1D(4, 2)(L.Reshape((-1, 6))(x))
    model = keras.Model(inputs, x)
    graph, _, small = _check_removal_is_exact(model)
    assert "dw" in _group_of(graph, "a").layers("depthwise")
    assert small.get_layer("dw").kernel.shape[2] == small.get_layer("a").filters


def test_grouped_convolution_keeps_equal_groups():
    inputs = keras.Input((6, 6, 4))
    x = L.Conv2D(8, 1, name="a")(inputs)
    x = L.Conv2D(12, 3, groups=4, padding="same", name="grouped")(x)
    x = L.Conv2D(12, 3, groups=12, padding="same", name="channelwise")(x)
    model = keras.Model(inputs, L.Conv2D(3, 1)(x))
    _, _, small = _check_removal_is_exact(model, ratio=0.5)
    grouped = small.get_layer("grouped")
    assert grouped.groups == 4 and grouped.filters % 4 == 0 and small.get_layer("a").filters % 4 == 0
    assert small.get_layer("channelwise").groups == grouped.filters


def test_squeeze_and_excitation_multiply_couples_the_gate_with_the_features():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="features")(inputs)
    s = L.GlobalAveragePooling2D()(x)
    s = L.Reshape((1, 1, 16))(s)
    s = L.Conv2D(4, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(16, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply(name="scale")([x, s])
    x = L.Multiply(name="spatial")([x, L.Conv2D(1, 1, name="mask")(x)])  # broadcast over channels
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(x)))
    graph, _, small = _check_removal_is_exact(model)
    assert set(_group_of(graph, "features").layers("out")) == {"features", "excite"}
    assert small.get_layer("features").filters == small.get_layer("excite").filters == 8
    assert small.get_layer("mask").filters == 1


def test_flatten_and_reshape_into_dense_remove_every_position_of_a_channel():
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="a")(inputs)
    x = L.MaxPooling2D()(x)
    flat = L.Flatten()(x)
    reshaped = L.Reshape((24,))(L.Conv2D(6, 1, name="b")(x))
    x = L.Concatenate()([flat, reshaped])
    model = keras.Model(inputs, L.Dense(3)(L.Dense(10, activation="relu")(x)))
    _, _, small = _check_removal_is_exact(model)
    kept = small.get_layer("a").filters + small.get_layer("b").filters
    assert small.layers[-2].kernel.shape[0] == kept * 4


def test_layer_and_group_normalization_keep_valid_shapes():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(12, 3, padding="same", name="a")(inputs)
    x = L.GroupNormalization(groups=3, name="gn")(x)
    x = L.Conv2D(8, 1, name="b")(x)
    x = L.LayerNormalization(name="ln")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1)(x))
    small = structured.prune(model, ratio=0.5)
    assert small.get_layer("a").filters == 6 and small.get_layer("gn").groups == 3
    assert small.get_layer("ln").gamma.shape == (4,)
    assert small(_x(model)).shape == (3, 6, 6, 2)


def test_transformer_encoder_prunes_heads_and_feed_forward_width():
    inputs = keras.Input((5, 16))
    attention = L.MultiHeadAttention(num_heads=4, key_dim=8, name="mha")
    x = L.Add()([inputs, attention(inputs, inputs)])
    x = L.LayerNormalization()(x)
    ff = L.Dense(32, activation="relu", name="ff")(x)
    x = L.LayerNormalization()(L.Add()([x, L.Dense(16, name="ff_out")(ff)]))
    model = keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling1D()(x)))
    graph = structured.DependencyGraph(model)
    kinds = {m.kind for g in graph.groups if g.prunable for m in g.members if m.layer == "mha"}
    assert kinds == {"heads", "key_dim", "value_dim"}
    assert not _group_of(graph, "ff_out").prunable  # the residual stream is the model's input
    _, _, small = _check_removal_is_exact(model)
    mha = small.get_layer("mha")
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (2, 4, 4)
    assert small.get_layer("ff").units == 16


def test_recurrent_layers_remove_whole_units_with_their_gates():
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 8, name="embed")(inputs)
    x = L.LSTM(12, return_sequences=True, name="lstm")(x)
    x = L.GRU(10, return_sequences=True, name="gru")(x)
    x = L.SimpleRNN(6, name="rnn")(x)
    model = keras.Model(inputs, L.Dense(2)(x))
    _, _, small = _check_removal_is_exact(model)
    lstm = small.get_layer("lstm")
    assert lstm.units == 6 and lstm.cell.kernel.shape == (4, 24) and small.get_layer("embed").output_dim == 4


def test_other_dimensions_and_transposed_convolutions():
    inputs = keras.Input((8, 8, 8, 2))
    x = L.Conv3D(6, 3, padding="same", name="c3")(inputs)
    x = L.MaxPooling3D()(x)
    x = L.Reshape((16, 4, 6))(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="up")(x)
    x = L.ZeroPadding2D()(x)
    x = L.Cropping2D(1)(x)
    x = L.UpSampling2D()(x)
    x = L.AveragePooling2D(2)(x)
    model = keras.Model(inputs, L.Conv2D(2, 1)(x))
    _, _, small = _check_removal_is_exact(model)
    assert small.get_layer("up").filters == 4


def test_nested_models_and_shared_layers():
    block_in = keras.Input((6, 6, 8))
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="inner_conv")(block_in)
    block = keras.Model(block_in, L.Add()([block_in, y]), name="block")
    head = keras.Sequential([keras.Input((6, 6, 8)), L.Conv2D(4, 1, name="head_conv")], name="head")
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = block(block(x))
    shared = L.Dense(5, name="shared")
    a, b = shared(head(x)), shared(L.Conv2D(4, 1, name="side")(x))
    model = keras.Model(inputs, L.Add()([a, b]))
    graph, _, small = _check_removal_is_exact(model)
    group = _group_of(graph, "stem")
    assert {"stem", "block/inner_conv"} <= set(group.layers("out"))
    assert small.get_layer("block").get_layer("inner_conv").filters == small.get_layer("stem").filters == 4
    assert small.get_layer("block").input_shape[-1] == 4


def test_keras_ops_in_the_graph_are_elementwise():
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(8, 1, name="a")(inputs)
    gate = L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    model = keras.Model(inputs, L.Conv2D(2, 1)(L.Multiply()([x, gate])))
    _check_removal_is_exact(model)
    scaled = keras.ops.multiply(L.Dense(8, name="scaled")(inputs), np.arange(8, dtype="float32"))
    model = keras.Model(inputs, L.Dense(2)(scaled))  # a constant per channel cannot be sliced
    assert not _group_of(structured.DependencyGraph(model), "scaled").prunable


def test_outputs_and_inputs_are_never_pruned(mlp):
    graph = structured.DependencyGraph(mlp)
    assert not graph.groups[0].prunable and not graph.groups[-1].prunable
    assert structured.prune(mlp, 0.5).layers[-1].units == 4


def test_lambda_and_custom_layers_are_refused_with_the_way_out():
    inputs = keras.Input((4,))
    x = L.Dense(8, name="a")(inputs)
    x = L.Lambda(lambda t: t * 2, name="double")(x)
    model = keras.Model(inputs, L.Dense(2)(L.Dense(6, name="b")(x)))
    with pytest.raises(ValueError, match=r"'double' is a Lambda layer.*ignored_layers.*register_rule"):
        structured.DependencyGraph(model)
    small = structured.prune(model, 0.5, ignored_layers=["double"])
    assert small.get_layer("a").units == 8 and small.get_layer("b").units == 3

    class Scale(L.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    model = keras.Model(inputs, L.Dense(2)(Scale(name="scale")(L.Dense(8, name="a")(inputs))))
    with pytest.raises(ValueError, match=r"'scale'.*Scale.*register_rule"):
        structured.prune(model, 0.5)
    structured.register_rule(Scale, structured.rules.channelwise("scale"))
    assert structured.prune(model, 0.5).get_layer("scale").scale.shape == (4,)


def test_subclassed_and_unbuilt_models_are_refused():
    from conftest import SubclassedModel

    with pytest.raises(ValueError, match="subclassed.*functionally"):
        structured.DependencyGraph(SubclassedModel())
    with pytest.raises(ValueError, match="not built"):
        structured.prune(keras.Sequential([L.Dense(2)]), 0.5)


def test_keras_layers_without_a_channel_rule_keep_their_channels_whole():
    inputs = keras.Input((5, 4))
    x = L.Dense(8, name="a")(inputs)
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 6), name="einsum")(x)
    x = L.Dense(10, activation="relu", name="b")(x)
    model = keras.Model(inputs, L.Dense(2)(x))
    graph = structured.DependencyGraph(model)
    assert not _group_of(graph, "a").prunable and _group_of(graph, "b").prunable
    _check_removal_is_exact(model)


def test_bidirectional_recurrent_layers_lose_the_same_units_in_both_directions():
    inputs = keras.Input((5, 3))
    x = L.Bidirectional(L.LSTM(8, return_sequences=True), name="both")(inputs)
    x = L.Bidirectional(L.GRU(6), merge_mode="sum", name="summed")(x)
    model = keras.Model(inputs, L.Dense(2)(x))
    _, _, small = _check_removal_is_exact(model)
    assert small.get_layer("both").forward_layer.units == small.get_layer("both").backward_layer.units == 4
    assert small.get_layer("summed").forward_layer.units == 3


def test_ignored_layers_keep_their_own_channels_but_may_lose_inputs(mlp):
    first, second = mlp.layers[0].name, mlp.layers[1].name
    small = structured.prune(mlp, 0.5, ignored_layers=[second])
    assert small.layers[0].units == 16 and small.layers[1].units == 32
    assert small.layers[1].kernel.shape == (16, 32)
    assert structured.prune(mlp, 0.5, ignored_layers=[first]).layers[0].units == 32


def test_layers_wrapped_for_unstructured_pruning_are_refused():
    import tfsparse

    wrapped = tfsparse.prune_low_magnitude(
        keras.Sequential([keras.Input((4,)), L.Dense(8), L.Dense(2)]),
        pruning_schedule=tfsparse.ConstantSparsity(0.5, 0),
    )
    with pytest.raises(ValueError, match="strip_pruning"):
        structured.DependencyGraph(wrapped)


def test_channels_first_layers_keep_their_channels_whole():
    inputs = keras.Input((3, 6, 6))
    x = L.Conv2D(8, 3, data_format="channels_first", name="conv")(inputs)
    x = L.BatchNormalization(axis=1)(x)
    x = L.Dense(8, activation="relu", name="hidden")(L.Flatten(data_format="channels_first")(x))
    model = keras.Model(inputs, L.Dense(2)(x))
    _, _, small = _check_removal_is_exact(model)
    assert small.get_layer("conv").filters == 8 and small.get_layer("hidden").units == 4


def test_weight_slices_name_every_weight_axis_of_a_group(mlp):
    graph = structured.DependencyGraph(mlp)
    group = _group_of(graph, mlp.layers[0].name)
    found = {(path, index, axis) for path, index, axis, _ in graph.weight_slices(group)}
    first, second = mlp.layers[0].name, mlp.layers[1].name
    assert found == {(first, 0, 1), (first, 1, 0), (second, 0, 0)}
    channels = dict(((p, i, a), c) for p, i, a, c in graph.weight_slices(group.index))
    np.testing.assert_array_equal(channels[(second, 0, 0)], np.arange(32))
