import keras
import numpy as np
import pytest
from conftest import make_digits_cnn, make_mlp

import tfsparse
from tfsparse import mask_updates


def _compiled(model, learning_rate=1e-2):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def test_finetune_keeps_masks_fixed_and_decays_the_learning_rate(tabular):
    x, y = tabular
    schedule = tfsparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=16, frequency=8)
    pruned = _compiled(tfsparse.prune_low_magnitude(make_mlp(), schedule))
    pruned.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    wrappers = mask_updates.collect_wrappers(pruned)
    masks = [w.get_masks()[0] for w in wrappers]
    history = tfsparse.finetune(pruned, x, y, epochs=4, batch_size=32, final_learning_rate=1e-4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for wrapper, before in zip(wrappers, masks):
        np.testing.assert_array_equal(wrapper.get_masks()[0], before)
        assert np.all(wrapper.get_pruned_weight_values()[0][before == 0] == 0)
    assert float(pruned.optimizer.learning_rate) == pytest.approx(1e-4, rel=1e-3)


def test_finetune_refuses_while_a_schedule_would_still_change_the_masks(tabular):
    x, y = tabular
    pruned = _compiled(tfsparse.prune_low_magnitude(make_mlp(), tfsparse.ConstantSparsity(0.5, 0)))
    with pytest.raises(ValueError, match="would still be pruned at step 0 by its schedule"):
        tfsparse.finetune(pruned, x, y, epochs=1)
    with pytest.raises(ValueError, match="must be compiled"):
        tfsparse.finetune(tfsparse.prune_low_magnitude(make_mlp()), x, y, epochs=1)
    with pytest.raises(ValueError, match="has no pruned layers"):
        tfsparse.finetune(_compiled(make_mlp()), x, y, epochs=1)


def test_prune_and_finetune_keeps_the_accuracy_of_digits_at_90_percent(digits_all):
    (x, y), (x_test, y_test) = digits_all
    dense = _compiled(make_digits_cnn(), 3e-3)
    dense.fit(x, y, epochs=8, batch_size=64, verbose=0)
    dense_accuracy = dense.evaluate(x_test, y_test, verbose=0)[1]
    pruned = tfsparse.prune_and_finetune(
        dense,
        x,
        y,
        sparsity=0.9,
        pruning_epochs=4,
        finetune_epochs=3,
        batch_size=64,
        scope="global",
        strip=True,
    )
    kernels = [layer.get_weights()[0] for layer in pruned.layers if layer.get_weights()]
    assert sum(int((k == 0).sum()) for k in kernels) == round(0.9 * sum(k.size for k in kernels))
    _compiled(pruned)
    assert pruned.evaluate(x_test, y_test, verbose=0)[1] >= dense_accuracy - 0.03


def test_finetune_with_a_teacher_pulls_the_pruned_model_toward_the_teacher(tabular):
    from tfsparse.distill import distillation_loss

    x, y = tabular
    dense = _compiled(make_mlp())
    dense.fit(x, y, epochs=3, batch_size=32, verbose=0)
    pruned = _compiled(tfsparse.prune_low_magnitude(dense, tfsparse.ConstantSparsity(0.8, 0, end_step=0)))
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    masks = [w.get_masks()[0] for w in mask_updates.collect_wrappers(pruned)]

    def gap():
        return float(distillation_loss(dense.predict(x, verbose=0), pruned.predict(x, verbose=0), 2.0))

    before = gap()
    tfsparse.finetune(
        pruned, x, y, epochs=3, batch_size=32, verbose=0, teacher=dense, temperature=2.0, alpha=1.0
    )
    assert gap() < 0.5 * before
    for wrapper, mask in zip(mask_updates.collect_wrappers(pruned), masks):
        np.testing.assert_array_equal(wrapper.get_masks()[0], mask)
