import numpy as np
import pytest

import tfsparse
from tfsparse import SensitivityScan, allocation, mask_updates


def _accuracy(model, data):
    x, y = data
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


@pytest.fixture(scope="module")
def scan(trained_digits_cnn):
    model, validation, _ = trained_digits_cnn
    return tfsparse.sensitivity_scan(model, validation, sparsities=(0.5, 0.8, 0.9, 0.95, 0.98), verbose=0)


def test_allocate_prunes_the_insensitive_layer_first_and_meets_the_target_exactly():
    scan = SensitivityScan(
        results={"robust": {0.5: 0.90, 0.9: 0.89, 0.98: 0.88}, "fragile": {0.5: 0.6, 0.9: 0.2, 0.98: 0.1}},
        metric="accuracy",
        baseline=0.9,
        sizes={"robust": 900, "fragile": 100},
    )
    chosen = allocation.allocate(scan, 0.9)
    assert chosen["robust"] == pytest.approx(0.98)
    assert chosen["fragile"] == pytest.approx((0.9 * 1000 - 0.98 * 900) / 100)
    with pytest.raises(ValueError, match="target=0.99"):
        allocation.allocate(scan, 0.99)


def test_auto_sparsity_meets_the_target_with_different_layer_sparsities(trained_digits_cnn, scan):
    model, validation, test = trained_digits_cnn
    chosen = tfsparse.auto_sparsity(model, validation, target=0.9, scan=scan)
    assert set(chosen) == set(scan.results)
    weighted = sum(scan.sizes[n] * s for n, s in chosen.items()) / sum(scan.sizes[n] for n in chosen)
    assert weighted == pytest.approx(0.9, abs=0.01)
    assert max(chosen.values()) - min(chosen.values()) > 0.3
    # The dict drives per-layer schedules; the masks reach each layer's sparsity.
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule={n: tfsparse.ConstantSparsity(s, 0) for n, s in chosen.items()}
    )
    wrappers = mask_updates.collect_wrappers(pruned)
    mask_updates.update_masks(wrappers, 0)
    for wrapper in wrappers:
        mask = wrapper.get_masks()[0]
        assert (mask == 0).sum() == round(chosen[wrapper.layer.name] * mask.size)
    # Chosen on the validation split, it beats one sparsity for all layers on the test split.
    auto = _accuracy(tfsparse.prune_oneshot(model, chosen, criterion="magnitude"), test)
    uniform = _accuracy(tfsparse.prune_oneshot(model, 0.9, criterion="magnitude"), test)
    assert auto > uniform + 0.2


def test_auto_sparsity_within_a_metric_drop_stays_within_it(trained_digits_cnn, scan):
    model, validation, _ = trained_digits_cnn
    chosen = tfsparse.auto_sparsity(model, validation, max_metric_drop=0.02, scan=scan)
    pruned = tfsparse.prune_oneshot(model, chosen, criterion="magnitude")
    assert _accuracy(pruned, validation) >= scan.baseline - 0.02
    weighted = sum(scan.sizes[n] * s for n, s in chosen.items()) / sum(scan.sizes.values())
    assert weighted > 0.5
    with pytest.raises(ValueError, match="exactly one"):
        tfsparse.auto_sparsity(model, validation, target=0.9, max_metric_drop=0.01, scan=scan)


def test_per_layer_schedules_leave_unnamed_layers_unpruned_and_refuse_unknown_names(trained_digits_cnn):
    model, _, _ = trained_digits_cnn
    pruned = tfsparse.prune_low_magnitude(
        model, pruning_schedule={"dense": tfsparse.ConstantSparsity(0.7, 0)}
    )
    assert [w.layer.name for w in mask_updates.collect_wrappers(pruned)] == ["dense"]
    with pytest.raises(ValueError, match=r"\['dens'\]"):
        tfsparse.prune_low_magnitude(model, pruning_schedule={"dens": tfsparse.ConstantSparsity(0.7, 0)})
    with pytest.raises(ValueError, match="'dense': 0.7"):
        tfsparse.prune_low_magnitude(model, pruning_schedule={"dense": 0.7})
