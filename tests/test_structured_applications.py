"""Structured pruning of every keras.applications family: smaller, runs, same shapes, saves and reloads."""

import warnings

import keras
import numpy as np
import pytest
from applications import CI_FAMILIES, build_application, input_batch

from tfsparse import structured
from tfsparse.analysis import count_flops

RATIO = 0.5


def _flops(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preprocessing layers count as 0 in both models
        return count_flops(model)


@pytest.mark.parametrize("family", CI_FAMILIES)
def test_family_prunes_to_a_smaller_model_that_runs_saves_and_reloads(family, tmp_path):
    model = build_application(family)
    small = structured.prune(model, ratio=RATIO)
    assert small.input_shape == model.input_shape and small.output_shape == model.output_shape
    # Half of the channels of both sides of most weights: about a quarter of the FLOPs and parameters.
    flops = _flops(small) / _flops(model)
    params = small.count_params() / model.count_params()
    assert 0.2 < flops < 0.4 and 0.2 < params < 0.4, (flops, params)
    x = input_batch(model)
    outputs = np.asarray(small(x))
    assert np.isfinite(outputs).all()
    assert all(not type(layer).__module__.startswith("tfsparse") for layer in small.layers)
    path = tmp_path / "small.keras"
    small.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded(x)), outputs, atol=1e-5)


def test_pruned_mobilenet_converts_to_tflite_and_runs_in_litert():
    from tfsparse import export

    model = build_application("mobilenet")
    small = structured.prune(model, ratio=RATIO, round_to=8)
    convolutions = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    changed = [
        small.get_layer(name).filters
        for name in convolutions
        if small.get_layer(name).filters != model.get_layer(name).filters
    ]
    assert changed and all(filters % 8 == 0 for filters in changed)
    # to_tflite runs the file in LiteRT and checks it against the Keras model before returning it.
    flatbuffer = export.to_tflite(small, sparse=False, representative_data=input_batch(model, batch=4))
    assert len(flatbuffer) < 4 * small.count_params() + 100_000 < 4 * model.count_params()
