import numpy as np
import pytest
from conftest import make_mlp

import tfsparse
from tfsparse.calibration import Calibration


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 16)).astype("float32"), rng.integers(0, 4, 64).astype("int32")


def test_empty_calibration_data_is_refused_by_one_shot_taylor(data):
    # It used to score every weight 0 and prune whole leading rows by position.
    x, y = data
    model = make_mlp()
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"`calibration_data` has no samples \(x of shape \(0, 16\)\)"):
        tfsparse.prune_oneshot(model, 0.5, (x[:0], y[:0]), criterion="taylor")


def test_empty_calibration_data_is_refused_when_fit_begins(data):
    x, y = data
    pruned = tfsparse.prune_low_magnitude(make_mlp(), criterion="taylor")
    pruned.compile("sgd", "sparse_categorical_crossentropy")
    step = tfsparse.UpdatePruningStep(calibration_data=(x[:0], y[:0]))
    with pytest.raises(ValueError, match="has no samples"):
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=[step])
    assert all(mask.min() == 1 for layer in pruned.layers for mask in layer.get_masks())


def test_an_empty_iterable_of_batches_is_refused(data):
    calibration = Calibration(tfsparse.prune_low_magnitude(make_mlp()), [])
    with pytest.raises(ValueError, match="gave no batches"):
        calibration.input_norms([])


def test_inputs_and_targets_of_different_lengths_are_refused_with_both_lengths(data):
    x, y = data
    with pytest.raises(ValueError, match="as many targets as inputs. Received: x with 64 samples, y with 10"):
        Calibration(make_mlp(), (x, y[:10]))


def test_nan_calibration_inputs_are_refused_where_they_enter(data):
    x, y = data
    x = x.copy()
    x[3, 4] = np.nan
    with pytest.raises(ValueError, match="`calibration_data` holds 1 NaN input values"):
        tfsparse.prune_oneshot(make_mlp(), 0.5, x, criterion="wanda")
