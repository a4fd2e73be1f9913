"""Unstructured pruning of one `keras.applications` constructor per family (tests/applications.py).

Each is pruned during one step of `fit()`, stripped, and must give the pruned model's outputs;
a cheap one also goes through save, reload and sparse TFLite export. The training step runs
eagerly with a zero learning rate: tracing a compiled step of these graphs costs far more than the
step itself, and untrained networks at 32x32 pixels can overflow to NaN after a real update.
"""

import functools

import keras
import numpy as np
import pytest
from applications import CI_FAMILIES, build_application, input_batch

import tfsparse
from tfsparse.mask_updates import collect_wrappers

SPARSITY = 0.5


EXPORTED_FAMILY = "mobilenet"  # the cheapest to convert


def _pruned_application(family: str) -> tuple[keras.Model, keras.Model]:
    """(the family's model, the same pruned by one step of fit)."""
    if family == EXPORTED_FAMILY:
        return _pruned_exported_family()
    model = build_application(family)
    return model, _pruned_by_fit(model)


@functools.cache
def _pruned_exported_family() -> tuple[keras.Model, keras.Model]:
    # Kept for the export test, which then skips building, pruning and fitting it again.
    model = build_application(EXPORTED_FAMILY)
    return model, _pruned_by_fit(model)


def _pruned_by_fit(model: keras.Model) -> keras.Model:
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=tfsparse.ConstantSparsity(SPARSITY, 0))
    pruned.compile(
        keras.optimizers.SGD(learning_rate=0.0), "sparse_categorical_crossentropy", run_eagerly=True
    )
    x = input_batch(model, batch=2)
    pruned.fit(
        x, np.array([1, 2]), batch_size=2, epochs=1, verbose=0, callbacks=[tfsparse.UpdatePruningStep()]
    )
    return pruned


def _kernel_sparsities(pruned: keras.Model) -> list[float]:
    return [float(np.mean(mask == 0)) for wrapper in collect_wrappers(pruned) for mask in wrapper.get_masks()]


@pytest.mark.parametrize("family", CI_FAMILIES)
def test_every_application_family_prunes_in_fit_and_strips_to_the_same_outputs(family, recwarn):
    model, pruned = _pruned_application(family)
    wrappers = collect_wrappers(pruned)
    assert wrappers and all(wrapper.get_pruning_step() == 1 for wrapper in wrappers)
    # Every pruned weight at round(0.5 * n) zeros (a 1-element weight keeps its only value).
    for wrapper in wrappers:
        for mask in wrapper.get_masks():
            assert int(np.sum(mask == 0)) == round(SPARSITY * mask.size), (wrapper.name, mask.shape)
    stripped = tfsparse.strip_pruning(pruned)
    assert not collect_wrappers(stripped)
    x = input_batch(model, batch=2, seed=1)
    expected = keras.ops.convert_to_numpy(pruned(x, training=False))
    assert np.all(np.isfinite(expected))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(stripped(x, training=False)), expected)
    # No family has a layer tfsparse has to leave out (ConvNeXt's LayerScale holds vectors only).
    assert not [w for w in recwarn if "does not know which of them to prune" in str(w.message)]


def test_a_pruned_application_saves_reloads_and_exports_to_sparse_tflite(tmp_path):
    model, pruned = _pruned_application(EXPORTED_FAMILY)
    pruned.save(tmp_path / "pruned.keras")
    reloaded = keras.saving.load_model(tmp_path / "pruned.keras")
    assert _kernel_sparsities(reloaded) == _kernel_sparsities(pruned)
    stripped = tfsparse.strip_pruning(reloaded)
    x = input_batch(model, batch=4, seed=2)
    report = tfsparse.export.verify_tflite(
        tfsparse.export.to_tflite(stripped, str(tmp_path / "m.tflite"), sparse=True), stripped, x
    )
    assert report.within_tolerance and report.runs_with_default_delegates
