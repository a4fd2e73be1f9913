import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import mask_updates
from tfsparse.distill import distillation_loss


def _student():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _accuracy(model, data):
    x, y = data
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_distillation_loss_is_the_tempered_kl_divergence_times_t_squared():
    teacher = np.array([[2.0, 0.0, -1.0]], dtype="float32")
    student = np.array([[0.5, 0.5, 0.0]], dtype="float32")
    soft_teacher = np.exp(teacher / 2.0) / np.exp(teacher / 2.0).sum()
    soft_student = np.exp(student / 2.0) / np.exp(student / 2.0).sum()
    expected = 4.0 * np.sum(soft_teacher * np.log(soft_teacher / soft_student))
    assert float(distillation_loss(teacher, student, 2.0)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_a_distilled_student_beats_the_same_student_trained_on_noisy_labels(trained_digits_cnn):
    teacher, validation, test = trained_digits_cnn
    x, y = validation
    noisy = y.copy()
    flipped = np.random.default_rng(0).random(len(y)) < 0.4
    noisy[flipped] = (y[flipped] + 3) % 10  # 40% of the labels are wrong
    weights = [w.copy() for w in teacher.get_weights()]
    accuracy = {}
    for alpha in (0.0, 0.8):
        keras.utils.set_random_seed(1)
        student = _student()
        distiller = tfsparse.Distiller(student=student, teacher=teacher, temperature=2.0, alpha=alpha)
        distiller.compile(keras.optimizers.Adam(3e-3), _loss(), metrics=["accuracy"])
        history = distiller.fit(x, noisy, epochs=5, batch_size=32, verbose=0)
        assert "accuracy" in history.history
        accuracy[alpha] = _accuracy(student, test)
    assert accuracy[0.8] > accuracy[0.0] + 0.05
    # The teacher is neither trained nor changed (it stays trainable for its owner).
    assert all(np.array_equal(a, b) for a, b in zip(weights, teacher.get_weights()))
    assert teacher.trainable


def test_pruning_callbacks_drive_the_wrapped_student_and_the_distiller_round_trips(trained_digits_cnn):
    teacher, validation, _ = trained_digits_cnn
    pruned = tfsparse.prune_low_magnitude(
        teacher, pruning_schedule=tfsparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=4)
    )
    distiller = tfsparse.Distiller(student=pruned, teacher=teacher)
    distiller.compile("adam", _loss())
    distiller.fit(*validation, epochs=2, batch_size=32, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    for wrapper in mask_updates.collect_wrappers(pruned):
        assert wrapper.get_pruning_step() == 20
        mask = wrapper.get_masks()[0]
        assert (mask == 0).sum() == round(0.8 * mask.size)
    config = distiller.get_config()
    copy = tfsparse.Distiller.from_config(config)
    assert (copy.temperature, copy.alpha) == (4.0, 0.5)
    with pytest.raises(ValueError, match="alpha=1.5"):
        tfsparse.Distiller(student=pruned, teacher=teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature=0"):
        tfsparse.Distiller(student=pruned, teacher=teacher, temperature=0)
