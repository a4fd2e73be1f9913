import json

import keras
import numpy as np
import pytest
from conftest import SubclassedModel, make_cnn

import tfsparse
from tfsparse import analysis
from tfsparse.mask_updates import collect_wrappers, prune_to

L = keras.layers


def _single(layer, input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def _pruned(model, sparsity):
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=tfsparse.ConstantSparsity(sparsity, 0))
    prune_to(collect_wrappers(pruned), lambda wrapper: sparsity)
    return pruned


def test_dense_3_to_4_has_16_parameters_and_28_flops():
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, bias_initializer="ones")])
    assert analysis.count_parameters(model) == (16, 16)
    assert analysis.count_parameters(model).total == model.count_params()
    # 12 multiply-adds (2 FLOPs each) and 4 bias adds.
    assert analysis.count_flops(model) == 28
    assert analysis.flops_by_layer(model) == {model.layers[0].name: 28}


# Hand-counted FLOPs for one example: a multiply-add is 2, a bias add, pooled value or merged
# element 1, batch normalization 2 per element.
FLOPS = {
    "Conv1D": (lambda: _single(L.Conv1D(4, 3), (8, 3)), 2 * 6 * (3 * 3 * 4) + 6 * 4),
    "Conv2D": (lambda: _single(L.Conv2D(4, 3), (6, 6, 2)), 2 * 16 * (3 * 3 * 2 * 4) + 16 * 4),
    "Conv2D strided, no bias": (
        lambda: _single(L.Conv2D(4, 3, strides=2, padding="same", use_bias=False), (6, 6, 2)),
        2 * 9 * (3 * 3 * 2 * 4),
    ),
    "Conv3D": (lambda: _single(L.Conv3D(2, 2), (3, 3, 3, 1)), 2 * 8 * (2 * 2 * 2 * 1 * 2) + 8 * 2),
    "Conv2DTranspose": (
        lambda: _single(L.Conv2DTranspose(4, 3), (4, 4, 3)),
        2 * 16 * (3 * 3 * 4 * 3) + 6 * 6 * 4,  # every input position scatters the whole kernel
    ),
    "DepthwiseConv2D": (
        lambda: _single(L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
        2 * 16 * (3 * 3 * 3 * 2) + 16 * 6,
    ),
    "SeparableConv2D": (
        lambda: _single(L.SeparableConv2D(4, 3), (6, 6, 3)),
        2 * 16 * (3 * 3 * 3 + 3 * 4) + 16 * 4,
    ),
    "EinsumDense": (
        lambda: _single(L.EinsumDense("ab,bc->ac", output_shape=8, bias_axes="c"), (6,)),
        2 * 6 * 8 + 8,
    ),
    "Dense on sequences": (lambda: _single(L.Dense(4), (5, 3)), 5 * (2 * 3 * 4 + 4)),
    "BatchNormalization": (lambda: _single(L.BatchNormalization(), (4, 4, 3)), 2 * 48),
    "MaxPooling2D": (lambda: _single(L.MaxPooling2D(2), (4, 4, 3)), 12 * 4),
    "GlobalAveragePooling2D": (lambda: _single(L.GlobalAveragePooling2D(), (4, 4, 3)), 48),
    "LSTM": (lambda: _single(L.LSTM(6), (5, 3)), 5 * (2 * (3 * 24 + 6 * 24) + 24)),
    "TimeDistributed Dense": (lambda: _single(L.TimeDistributed(L.Dense(2)), (5, 3)), 5 * (2 * 6 + 2)),
    "Flatten, Dropout, ReLU": (
        lambda: keras.Sequential([keras.Input((4, 2)), L.Flatten(), L.Dropout(0.5), L.ReLU()]),
        0,
    ),
}


@pytest.mark.parametrize("name", FLOPS)
def test_flops_match_hand_counts(name):
    build, expected = FLOPS[name]
    assert analysis.count_flops(build()) == expected


def test_flops_of_self_attention():
    inputs = keras.Input((5, 8))
    model = keras.Model(inputs, L.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs))
    projections = 4 * (2 * 5 * 64 + 5 * 8)  # query, key, value, output: 64 weights, used 5 times
    scores_and_sum = 2 * 2 * 5 * 5 * (4 + 4)  # per head: 5x5 scores over key_dim, 5x5 over value_dim
    assert analysis.count_flops(model) == projections + scores_and_sum


def test_flops_count_every_call_of_shared_layers_and_nested_models():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="inner_dense")], name="inner")
    shared = L.Dense(4, name="shared")
    inputs = keras.Input((4,))
    outputs = L.Add()([inner(shared(inputs)), inner(shared(shared(inputs)))])
    model = keras.Model(inputs, outputs)
    by_layer = analysis.flops_by_layer(model)
    assert by_layer["shared"] == 3 * (2 * 16 + 4)
    assert by_layer["inner/inner_dense"] == 2 * (2 * 12 + 3)
    assert by_layer[model.layers[-1].name] == 3  # the Add merges 2 inputs of 3 values
    assert analysis.count_flops(model) == sum(by_layer.values())


def test_sparse_flops_count_only_non_zero_weights():
    model = keras.Sequential([keras.Input((10,)), L.Dense(10)])
    pruned = _pruned(model, 0.7)
    assert analysis.count_flops(pruned) == analysis.count_flops(model) == 2 * 100 + 10
    assert analysis.count_flops(pruned, sparse=True) == 2 * 30 + 10
    assert analysis.count_flops(tfsparse.strip_pruning(pruned), sparse=True) == 2 * 30 + 10


def test_flops_need_fixed_shapes_and_a_graph():
    with pytest.raises(ValueError, match="fixed shapes"):
        analysis.count_flops(_single(L.Conv2D(2, 3), (None, None, 1)))

    subclassed = SubclassedModel()
    subclassed(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="never called"):
        analysis.count_flops(subclassed)


def test_unknown_layer_with_weights_counts_zero_with_a_warning():
    class Scale(L.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    model = keras.Sequential([keras.Input((3,)), Scale(name="scale"), L.Dense(2)])
    with pytest.warns(UserWarning, match="scale"):
        assert analysis.count_flops(model) == 2 * 6 + 2


def test_report_of_80_percent_pruned_model_shows_80_percent_on_kernels():
    model = make_cnn()
    pruned = _pruned(model, 0.8)
    report = analysis.sparsity_report(pruned)
    kernels = [row for row in report.rows if row.prunable]
    assert [row.weight for row in kernels] == ["kernel"] * 4  # conv, depthwise, dense, dense
    for row in kernels:
        assert row.size - row.nonzeros == round(0.8 * row.size)
    assert {row.weight for row in report.rows if not row.prunable} >= {"bias", "gamma", "moving_mean"}
    # Totals add up, and the masks and pruning steps are not counted as weights.
    assert report.totals.size == sum(row.size for row in report.rows) == model.count_params()
    assert report.totals.nonzeros == sum(row.nonzeros for row in report.rows)
    assert report.prunable_totals.sparsity == pytest.approx(0.8, abs=0.005)
    # The stripped model reports the same rows.
    stripped = tfsparse.strip_pruning(pruned)
    assert analysis.sparsity_report(stripped).rows == report.rows
    assert (
        analysis.count_parameters(stripped)
        == analysis.count_parameters(pruned)
        == (
            report.totals.size,
            report.totals.nonzeros,
        )
    )


def test_report_names_nested_layers_and_prints_a_table():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="inner_dense")], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, inner(L.Dense(4, name="outer_dense")(inputs)), name="outer")
    report = analysis.sparsity_report(_pruned(model, 0.5))
    assert [(row.layer, row.weight) for row in report.rows] == [
        ("outer_dense", "kernel"),
        ("outer_dense", "bias"),
        ("inner/inner_dense", "kernel"),
        ("inner/inner_dense", "bias"),
    ]
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "Model 'outer'" and lines[1].split()[:2] == ["Layer", "Weight"]
    assert "inner/inner_dense" in text and "50.0%" in text
    assert lines[-1].split()[:3] == ["Total", "pruned", "weights*"] and lines[-1].endswith("50.0%")
    data = json.loads(json.dumps(report.as_dict()))
    assert data["totals"]["size"] == 4 * 4 + 4 + 4 * 3 + 3
    assert data["rows"][0]["shape"] == [4, 4] and data["rows"][0]["sparsity"] == 0.5


def test_tflite_report_reads_sparse_tensors_from_the_flatbuffer():
    model = _single(L.Dense(64), (64,))
    stripped = tfsparse.strip_pruning(_pruned(model, 0.9))
    flatbuffer = tfsparse.export.to_tflite(stripped, sparse=True)
    report = analysis.tflite_sparsity_report(flatbuffer)
    (kernel,) = [row for row in report.rows if row.shape == (64, 64)]
    assert kernel.encoding == "sparse" and kernel.nonzeros == 64 * 64 - round(0.9 * 64 * 64)
    assert kernel.stored < kernel.size
    assert "FULLY_CONNECTED" in report.title and "Encoding" in str(report)
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        analysis.tflite_sparsity_report(b"not a model at all")
    with pytest.raises(ValueError, match="damaged"):
        analysis.tflite_sparsity_report(flatbuffer[: len(flatbuffer) // 3])
