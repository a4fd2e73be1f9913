"""check_speedup: FLOP reduction beside measured speedup, and the warning when they disagree."""

import warnings

import keras
import pytest

from tfsparse.structured.speed import SpeedupReport, check_speedup


def _mlp(width: int) -> keras.Model:
    inputs = keras.Input((16,))
    x = keras.layers.Dense(width, activation="relu")(inputs)
    x = keras.layers.Dense(width, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def test_an_overhead_bound_model_warns_that_fewer_flops_did_not_make_it_faster():
    # Both run in well under a millisecond, where Keras' per-call overhead dominates.
    with pytest.warns(UserWarning, match=r"FLOPs cut \d+\.\d+x .* less than half the FLOP reduction"):
        report = check_speedup(_mlp(64), _mlp(4), repeats=20)
    assert report.flop_reduction > 10 and report.speedup < 5
    assert report.falls_short


@pytest.mark.parametrize(
    "latency_ms, falls_short", [((1.0, 0.9), True), ((1.0, 0.5), False), ((1.0, 0.3), False)]
)
def test_falling_short_means_less_than_half_the_flop_reduction(latency_ms, falls_short):
    report = SpeedupReport(flops=(400, 100), latency_ms=latency_ms, runtime="litert", batch_size=1)
    assert report.flop_reduction == 4.0 and report.falls_short is falls_short
    assert "FLOPs cut 4.00x (400 -> 100)" in str(report)


def test_no_warning_when_asked_not_to_and_a_bad_runtime_is_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_speedup(_mlp(64), _mlp(4), repeats=2, warn=False)
    with pytest.raises(ValueError, match="`runtime`"):
        check_speedup(_mlp(4), _mlp(4), runtime="gpu")
