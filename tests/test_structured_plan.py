"""Plans: decided from scores, JSON round trip, replayable, applied to a smaller model."""

import json

import keras
import numpy as np
import pytest

from tfsparse import structured
from tfsparse.analysis import count_flops


def _x(model, batch=4, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, *model.input_shape[1:])).astype("float32")


def test_prune_removes_the_requested_share_of_channels_and_keeps_shapes(cnn):
    small = structured.prune(cnn, ratio=0.5)
    assert [layer.name for layer in small.layers] == [layer.name for layer in cnn.layers]
    assert small.layers[1].filters == 4
    assert small.layers[-2].units == 16
    assert small.layers[-1].units == 10
    assert small.input_shape == cnn.input_shape and small.output_shape == cnn.output_shape
    assert count_flops(small) < 0.6 * count_flops(cnn)
    assert small(_x(cnn)).shape == (4, 10)


def test_ratio_zero_leaves_outputs_identical(cnn):
    same = structured.prune(cnn, ratio=0.0)
    np.testing.assert_array_equal(same(_x(cnn)), cnn(_x(cnn)))
    assert same.count_params() == cnn.count_params()


def test_plan_json_round_trip_and_replay_give_identical_models(mlp):
    plan = structured.plan(mlp, ratio=0.25, importance="l1")
    assert set(plan.reasons) == {g.index for g in structured.DependencyGraph(mlp).groups}
    assert "l1: lowest 8 of 32 channels" in str(plan)
    again = structured.Plan.from_json(plan.to_json())
    assert again == plan and again.removed == plan.removed
    json.loads(plan.to_json())
    first, second = structured.apply(mlp, plan), structured.apply(mlp, again)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [layer.name for layer in first.layers] == [layer.name for layer in mlp.layers]


def test_plan_built_from_a_removed_dict_removes_exactly_those_channels(mlp):
    graph = structured.DependencyGraph(mlp)
    group = next(g for g in graph.groups if g.prunable)
    producer = group.layers("out")[0]
    small = structured.apply(mlp, structured.Plan({group.index: [0, 3]}))
    kernel = mlp.get_layer(producer).kernel.numpy()
    np.testing.assert_array_equal(small.get_layer(producer).kernel.numpy(), np.delete(kernel, [0, 3], axis=1))


def test_zero_carrying_channels_are_removed_without_changing_outputs():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    bn = model.layers[2]
    gamma, beta, mean, var = bn.get_weights()
    gamma[::2] = 0
    beta[::2] = 0
    bn.set_weights([gamma, beta, mean + 0.3, var + 0.5])
    small = structured.prune(model, ratio=0.5, importance="bn_scale")
    assert small.layers[1].filters == 8
    np.testing.assert_allclose(small(_x(model)), model(_x(model)), atol=1e-4)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": 0.5, "scope": "model"}, "scope"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.5, "importance": "l3"}, "importance"),
        ({"ratio": {"dense_2": 0.5}, "scope": "global"}, "global"),
        ({"ratio": 0.5, "ignored_layers": ["nope"]}, "nope"),
        ({"ratio": {"nope": 0.5}}, "nope"),
    ],
)
def test_bad_arguments_are_refused_by_name(mlp, arguments, message):
    with pytest.raises(ValueError, match=message):
        structured.prune(mlp, **arguments)


@pytest.mark.parametrize("backend", ["jax", "torch"])  # TensorFlow: every other test here
def test_structured_pruning_on_each_backend(backend):
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    script = os.path.join(os.path.dirname(__file__), "structured_backend.py")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["backend"] == backend
    assert facts["filters"] == 4  # the four channels whose batch-norm scale is zero
    assert facts["difference"] < 1e-4
    assert facts["same_at_zero"]
    assert facts["heads"] == 1
    assert facts["taylor_groups"] >= 4 and facts["taylor_finite"]
