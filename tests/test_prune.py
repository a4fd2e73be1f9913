import keras
import numpy as np
import pytest
from conftest import SubclassedModel, make_mlp

import tfsparse
from tfsparse import PruneLowMagnitude
from tfsparse.mask_updates import collect_wrappers

L = keras.layers


def _mha_model():
    inputs = keras.Input((5, 8))
    outputs = L.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    return keras.Model(inputs, outputs)


def _single(layer, input_shape, dtype="float32"):
    inputs = keras.Input(input_shape, dtype=dtype)
    return keras.Model(inputs, layer(inputs))


# Every layer type tfsparse prunes out of the box, in a one-layer model.
LAYER_MODELS = {
    "Dense": lambda: _single(L.Dense(8), (6,)),
    "EinsumDense": lambda: _single(L.EinsumDense("ab,bc->ac", output_shape=8, bias_axes="c"), (6,)),
    "Conv1D": lambda: _single(L.Conv1D(4, 3), (8, 3)),
    "Conv2D": lambda: _single(L.Conv2D(4, 3), (6, 6, 2)),
    "Conv3D": lambda: _single(L.Conv3D(4, 2), (4, 4, 4, 2)),
    "Conv1DTranspose": lambda: _single(L.Conv1DTranspose(4, 3), (6, 3)),
    "Conv2DTranspose": lambda: _single(L.Conv2DTranspose(4, 3), (4, 4, 3)),
    "Conv3DTranspose": lambda: _single(L.Conv3DTranspose(4, 2), (3, 3, 3, 2)),
    "DepthwiseConv2D": lambda: _single(L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
    "SeparableConv1D": lambda: _single(L.SeparableConv1D(4, 3), (8, 3)),
    "SeparableConv2D": lambda: _single(L.SeparableConv2D(4, 3), (6, 6, 3)),
    "Embedding": lambda: _single(L.Embedding(20, 8), (5,), dtype="int32"),
    "MultiHeadAttention": _mha_model,
    "LSTM": lambda: _single(L.LSTM(6), (5, 3)),
    "GRU": lambda: _single(L.GRU(6), (5, 3)),
    "SimpleRNN": lambda: _single(L.SimpleRNN(6), (5, 3)),
}


def _inputs_for(model, count=16):
    rng = np.random.default_rng(0)
    spec = model.inputs[0]
    shape = (count, *spec.shape[1:])
    if "int" in str(spec.dtype):
        return rng.integers(0, 20, size=shape).astype("int32")
    return rng.normal(size=shape).astype("float32")


def _fit(model, x, steps=2, batch_size=8):
    y = np.zeros((len(x), *model.outputs[0].shape[1:]), "float32")
    model.compile("sgd", "mse")
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=1,
        steps_per_epoch=steps,
        verbose=0,
        callbacks=[tfsparse.UpdatePruningStep()],
    )


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_every_known_layer_is_pruned_to_exact_sparsity_and_strips_to_identical_outputs(name):
    model = LAYER_MODELS[name]()
    x = _inputs_for(model)
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule=tfsparse.ConstantSparsity(0.6, 0, frequency=1)
    )
    (wrapper,) = collect_wrappers(pruned)
    assert isinstance(wrapper.layer, type(model.layers[-1]))
    expected_count = {
        "SeparableConv1D": 2,
        "SeparableConv2D": 2,
        "LSTM": 2,
        "GRU": 2,
        "SimpleRNN": 2,
        "MultiHeadAttention": 4,
    }.get(name, 1)
    assert len(wrapper.pruned_weights) == len(wrapper.masks) == expected_count
    _fit(pruned, x)
    for weight, mask in zip(wrapper.pruned_weights, wrapper.get_masks()):
        stored = keras.ops.convert_to_numpy(weight.value)
        assert int((mask == 0).sum()) == round(0.6 * mask.size), weight.path
        assert (stored[mask == 0] == 0).all()
    stripped = tfsparse.strip_pruning(pruned)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in stripped.layers)
    assert type(stripped.layers[-1]) is type(model.layers[-1])
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0))


def test_pruning_a_functional_model_keeps_inputs_outputs_and_weights_and_copies_them(cnn):
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    before = [w.copy() for w in cnn.get_weights()]
    pruned = tfsparse.prune_low_magnitude(cnn)
    kinds = [type(layer).__name__ for layer in pruned.layers]
    assert kinds == [
        "InputLayer",
        "PruneLowMagnitude",
        "BatchNormalization",
        "PruneLowMagnitude",
        "MaxPooling2D",
        "Flatten",
        "PruneLowMagnitude",
        "PruneLowMagnitude",
    ]
    assert [tuple(t.shape) for t in pruned.inputs] == [tuple(t.shape) for t in cnn.inputs]
    np.testing.assert_allclose(pruned.predict(x, verbose=0), cnn.predict(x, verbose=0), atol=1e-6)
    tfsparse.mask_updates.prune_to(collect_wrappers(pruned), lambda wrapper: 0.9)
    for original, kept in zip(before, cnn.get_weights()):
        np.testing.assert_array_equal(original, kept)  # the model passed in is untouched


def test_sequential_layer_list_and_single_layer_are_wrapped(mlp):
    pruned = tfsparse.prune_low_magnitude(mlp)
    assert isinstance(pruned, keras.Sequential)
    assert all(isinstance(layer, PruneLowMagnitude) for layer in pruned.layers)
    wrapped = tfsparse.prune_low_magnitude([L.Dense(3), L.ReLU(), L.Dense(2)])
    assert [type(layer).__name__ for layer in wrapped] == ["PruneLowMagnitude", "ReLU", "PruneLowMagnitude"]
    model = keras.Sequential([keras.Input((4,)), *wrapped])
    assert model.predict(np.ones((1, 4), "float32"), verbose=0).shape == (1, 2)
    assert isinstance(tfsparse.prune_low_magnitude(L.Conv2D(2, 3)), PruneLowMagnitude)


def test_nested_models_are_pruned_inside(tabular):
    x, y = tabular
    inner = make_mlp()
    inputs = keras.Input((16,))
    outputs = L.Dense(4)(inner(inputs))
    outer = keras.Model(inputs, outputs)
    pruned = tfsparse.prune_low_magnitude(
        outer, pruning_schedule=tfsparse.ConstantSparsity(0.75, 0, frequency=1)
    )
    assert len(collect_wrappers(pruned)) == 4
    assert isinstance(pruned.layers[1], keras.Sequential)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), outer.predict(x, verbose=0), atol=1e-5)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    for wrapper in collect_wrappers(pruned):
        (mask,) = wrapper.get_masks()
        assert (mask == 0).sum() == round(0.75 * mask.size)
    stripped = tfsparse.strip_pruning(pruned)
    assert isinstance(stripped.layers[1], keras.Sequential)
    assert not collect_wrappers(stripped)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)


def test_shared_layers_stay_shared():
    dense = L.Dense(4)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, dense(dense(inputs)))
    pruned = tfsparse.prune_low_magnitude(model)
    assert len(collect_wrappers(pruned)) == 1


def test_block_and_m_by_n_patterns_reach_the_model_weights(tabular):
    x, y = tabular
    pruned = tfsparse.prune_low_magnitude(
        make_mlp(), pruning_schedule=tfsparse.ConstantSparsity(0.5, 0, frequency=1), block_size=(4, 1)
    )
    _fit(pruned, x, steps=1)
    kernel = collect_wrappers(pruned)[0].get_masks()[0]
    assert (kernel.reshape(4, 4, 32).std(axis=1) == 0).all()  # whole 4x1 blocks
    pruned = tfsparse.prune_low_magnitude(make_mlp(), sparsity_m_by_n=(2, 4))
    _fit(pruned, x, steps=1)
    for wrapper in collect_wrappers(pruned):
        mask = wrapper.get_masks()[0]
        assert (mask.reshape(-1, 4, mask.shape[1]).sum(axis=1) == 2).all()


def test_stripped_model_loads_in_a_process_that_never_imports_tfsparse(tmp_path, cnn):
    import subprocess
    import sys

    pruned = tfsparse.prune_low_magnitude(cnn, pruning_schedule=tfsparse.ConstantSparsity(0.8, 0))
    tfsparse.mask_updates.prune_to(collect_wrappers(pruned), lambda wrapper: 0.8)
    path = tmp_path / "stripped.keras"
    tfsparse.strip_pruning(pruned).save(path)
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        f"y = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "assert 'tfsparse' not in sys.modules\n"
        "print(sum(int((w == 0).sum()) for w in m.get_weights()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= round(0.8 * (3 * 3 * 8)) + round(0.8 * 128 * 32)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), pruned.predict(x, verbose=0), atol=1e-6)


def test_bad_arguments_and_inputs_are_refused_with_clear_messages(cnn):
    with pytest.raises(ValueError, match="pruning_schedule"):
        tfsparse.prune_low_magnitude(cnn, pruning_schedule=0.5)
    with pytest.raises(ValueError, match="block_pooling_type"):
        tfsparse.prune_low_magnitude(cnn, block_pooling_type="MEDIAN")
    with pytest.raises(ValueError, match="sparsity_m_by_n"):
        tfsparse.prune_low_magnitude(cnn, sparsity_m_by_n=(4, 2))
    with pytest.raises(ValueError, match="block_size"):
        tfsparse.prune_low_magnitude(cnn, block_size=(0, 2))
    with pytest.raises(ValueError, match="to_prune"):
        tfsparse.prune_low_magnitude("model.keras")
    with pytest.raises(ValueError, match="already wrapped"):
        tfsparse.prune_low_magnitude(tfsparse.prune_low_magnitude(cnn))

    with pytest.raises(ValueError, match="subclassed.*inside its __init__"):
        tfsparse.prune_low_magnitude(SubclassedModel())


def test_subclassed_model_with_wrapped_layers_trains_and_prunes(tabular):
    x, y = tabular

    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = tfsparse.prune_low_magnitude(
                L.Dense(16, activation="relu"),
                pruning_schedule=tfsparse.ConstantSparsity(0.5, 0, frequency=1),
            )
            self.out = L.Dense(4)

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    model = Classifier()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    (mask,) = model.hidden.get_masks()
    assert (mask == 0).sum() == round(0.5 * mask.size)
