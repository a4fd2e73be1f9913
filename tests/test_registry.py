import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import registry


class CustomWithWeights(keras.layers.Layer):
    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 4), name="kernel")

    def call(self, x):
        return x @ self.kernel


class CustomPrunable(CustomWithWeights, tfsparse.PrunableLayer):
    def get_prunable_weights(self):
        return [self.kernel]


class DuckPrunable(CustomWithWeights):
    def get_prunable_weights(self):
        return [self.kernel]


class MyDense(keras.layers.Dense):
    pass


@pytest.mark.parametrize(
    "layer, input_shape, expected",
    [
        (keras.layers.Dense(3), (4,), ["kernel"]),
        (MyDense(3), (4,), ["kernel"]),
        (keras.layers.SeparableConv2D(4, 3), (6, 6, 2), ["depthwise_kernel", "pointwise_kernel"]),
        (keras.layers.Embedding(10, 4), (5,), ["embeddings"]),
        (keras.layers.LSTM(3), (5, 2), ["kernel", "recurrent_kernel"]),
        (keras.layers.Bidirectional(keras.layers.GRU(3)), (5, 2), ["kernel", "recurrent_kernel"] * 2),
        (CustomPrunable(), (4,), ["kernel"]),
        (DuckPrunable(), (4,), ["kernel"]),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, keras.layers.Layer) else None,
)
def test_prunable_weights_are_the_kernels_not_the_biases(layer, input_shape, expected):
    layer.build((None, *input_shape))
    assert registry.is_prunable(layer)
    assert sorted(w.name for w in registry.prunable_weights(layer)) == sorted(expected)


def test_multi_head_attention_prunes_its_four_projection_kernels():
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    layer(np.zeros((1, 3, 8), "float32"), np.zeros((1, 3, 8), "float32"))
    weights = registry.prunable_weights(layer)
    assert len(weights) == 4 and all(w.name == "kernel" for w in weights)


@pytest.mark.parametrize(
    "layer",
    [keras.layers.MaxPooling2D(), keras.layers.ReLU(), keras.layers.Add(), keras.layers.BatchNormalization()],
    ids=lambda layer: type(layer).__name__,
)
def test_layers_without_prunable_weights_are_not_prunable(layer):
    assert not registry.is_prunable(layer)


def test_unknown_layer_with_weights_is_refused_with_the_fix_in_the_message():
    layer = CustomWithWeights(name="mystery")
    layer.build((None, 4))
    with pytest.raises(ValueError, match="mystery.*PrunableLayer"):
        registry.is_prunable(layer)
    with pytest.raises(ValueError, match="mystery.*PrunableLayer"):
        tfsparse.PruneLowMagnitude(layer)  # asked for by name: refused, not skipped


class VectorOnly(keras.layers.Layer):
    """Like ConvNeXt's LayerScale: one learned scale per channel, nothing to prune."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), name="gamma")

    def call(self, x):
        return x * self.gamma


def _model_with(custom_layer):
    inputs = keras.Input((4,))
    x = custom_layer(keras.layers.Dense(4, name="first")(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, name="last")(x))


def test_a_layer_whose_weights_are_all_vectors_passes_through_unwrapped_without_warning(recwarn):
    pruned = tfsparse.prune_low_magnitude(_model_with(VectorOnly(name="scale")))
    assert [type(layer).__name__ for layer in pruned.layers[1:]] == [
        "PruneLowMagnitude",
        "VectorOnly",
        "PruneLowMagnitude",
    ]
    assert not [w for w in recwarn if "tfsparse" in str(w.message) or "prune" in str(w.message)]


def test_an_unknown_layer_with_matrices_is_left_unpruned_with_one_warning_naming_it():
    with pytest.warns(UserWarning) as caught:
        pruned = tfsparse.prune_low_magnitude(_model_with(CustomWithWeights(name="mystery")))
    messages = [str(w.message) for w in caught if "does not know" in str(w.message)]
    assert len(messages) == 1
    assert "'mystery' of type CustomWithWeights" in messages[0] and "PrunableLayer" in messages[0]
    assert "strict=True" in messages[0]
    assert type(pruned.get_layer("mystery")) is CustomWithWeights
    assert isinstance(pruned.get_layer("prune_low_magnitude_last"), tfsparse.PruneLowMagnitude)


def test_strict_restores_the_error_for_an_unknown_layer_with_matrices():
    with pytest.raises(ValueError, match="'mystery' of type CustomWithWeights.*PrunableLayer"):
        tfsparse.prune_low_magnitude(_model_with(CustomWithWeights(name="mystery")), strict=True)
