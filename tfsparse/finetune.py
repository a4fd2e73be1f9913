"""Prune -> retrain -> fine-tune: fine-tuning at fixed masks with a decayed learning rate.

Gradual pruning leaves the network at its final sparsity with a learning rate tuned for dense
training. Fine-tuning the kept weights again from that learning rate, decayed along a cosine to
(near) zero ("learning-rate rewinding", Renda et al., 2020), recovers more accuracy than either
stopping there or continuing at a small constant rate.
"""

from __future__ import annotations

import math

import keras

from tfsparse import criteria, mask_updates
from tfsparse.callbacks import UpdatePruningStep
from tfsparse.distill import Distiller
from tfsparse.prune import prune_low_magnitude, strip_pruning
from tfsparse.schedules import ConstantSparsity, PolynomialDecay


def _steps_per_epoch(x, batch_size: int | None, fit_kwargs: dict) -> int:
    if fit_kwargs.get("steps_per_epoch"):
        return int(fit_kwargs["steps_per_epoch"])
    first = x[0] if isinstance(x, (tuple, list)) else x
    if hasattr(first, "shape"):
        return math.ceil(int(first.shape[0]) / (batch_size or 32))
    try:
        return len(x)
    except TypeError:
        raise ValueError(
            "Cannot tell how many steps an epoch of `x` has; pass `steps_per_epoch=`. "
            f"Received: x of type {type(x).__name__}"
        ) from None


def _initial_learning_rate(optimizer) -> float:
    learning_rate = optimizer.get_config()["learning_rate"]
    if isinstance(learning_rate, dict):
        learning_rate = keras.saving.deserialize_keras_object(learning_rate)(0)
    return float(keras.ops.convert_to_numpy(learning_rate))


def _check_masks_stay_fixed(wrappers, steps: int) -> None:
    for wrapper in wrappers:
        start = wrapper.get_pruning_step()
        for step in range(start, start + steps):
            if wrapper.pruning_schedule(step)[0]:
                raise ValueError(
                    f"Layer '{wrapper.name}' would still be pruned at step {step} by its schedule "
                    f"{wrapper.pruning_schedule!r}, so masks would change while fine-tuning. Fine-tune "
                    "after the schedule's `end_step` (prune with an `end_step` before fine-tuning starts). "
                    f"Received: a model at pruning step {start} and {steps} fine-tuning steps."
                )


def finetune(
    model: keras.Model,
    x=None,
    y=None,
    *,
    epochs: int,
    learning_rate: float | None = None,
    final_learning_rate: float = 0.0,
    batch_size: int | None = None,
    callbacks: list | None = None,
    teacher: keras.Model | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    **fit_kwargs,
) -> keras.callbacks.History:
    """Trains a pruned model at fixed masks, the learning rate decaying along a cosine.

    The model is recompiled with its own loss and metrics and a fresh optimizer of the same kind,
    whose learning rate goes from `learning_rate` to `final_learning_rate` over the fine-tuning
    steps. Masks must stay fixed: every layer's schedule must have ended (a `ValueError` says which
    one has not). `UpdatePruningStep` is added to `callbacks` if missing. With a `teacher` (the
    dense model, typically), the model learns from the teacher's softened outputs as well as the
    labels (`tfsparse.Distiller`).

    Args:
        model: a compiled model from `prune_low_magnitude`, pruned to its final masks.
        x, y: training data, as for `model.fit`.
        epochs: fine-tuning epochs.
        learning_rate: the starting learning rate; defaults to the one the model's optimizer
            started from (rewinding the learning rate rather than continuing small).
        final_learning_rate: the learning rate at the last step.
        batch_size: as for `model.fit`.
        callbacks: further callbacks.
        teacher: a model to distill from, or None to train on the labels alone.
        temperature: the distillation temperature (with `teacher`).
        alpha: the weight of the distillation loss, `1 - alpha` that of the labels' loss.
        **fit_kwargs: further `model.fit` arguments (`validation_data`, `verbose`, ...).

    Returns:
        The `History` of the fit.

    Example:

    ```python
    pruned.fit(x, y, epochs=10, callbacks=[tfsparse.UpdatePruningStep()])  # schedule ends in here
    tfsparse.finetune(pruned, x, y, epochs=5)
    tfsparse.finetune(pruned, x, y, epochs=5, teacher=dense_model, temperature=2.0, alpha=0.5)
    final = tfsparse.strip_pruning(pruned)
    ```
    """
    wrappers = mask_updates.collect_wrappers(model)
    if not wrappers:
        raise ValueError(f"Model '{model.name}' has no pruned layers; `finetune` fine-tunes a pruned model.")
    if getattr(model, "optimizer", None) is None or not model.get_compile_config():
        raise ValueError(
            f"Model '{model.name}' must be compiled before `finetune`: call `model.compile(...)`."
        )
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Argument `epochs` must be a positive integer. Received: epochs={epochs}")
    steps = epochs * _steps_per_epoch(x, batch_size, fit_kwargs)
    mask_updates.sync_backend_state(model)
    _check_masks_stay_fixed([w for w in wrappers if w.built], steps)
    if learning_rate is None:
        learning_rate = _initial_learning_rate(model.optimizer)
    if not learning_rate > 0 or not 0 <= final_learning_rate <= learning_rate:
        raise ValueError(
            "Arguments `learning_rate` and `final_learning_rate` must satisfy 0 <= final_learning_rate "
            f"<= learning_rate, learning_rate > 0. Received: learning_rate={learning_rate}, "
            f"final_learning_rate={final_learning_rate}"
        )
    decay = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=steps, alpha=final_learning_rate / learning_rate
    )
    optimizer_config = {**model.optimizer.get_config(), "learning_rate": decay}
    compile_arguments = keras.saving.deserialize_keras_object(model.get_compile_config())
    compile_arguments["optimizer"] = type(model.optimizer).from_config(optimizer_config)
    trainer = _trainer(model, teacher, temperature, alpha)
    trainer.compile(**compile_arguments)
    callbacks = list(callbacks or [])
    if not any(isinstance(c, UpdatePruningStep) for c in callbacks):
        callbacks.append(UpdatePruningStep())
    return trainer.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=callbacks, **fit_kwargs)


def _trainer(
    model: keras.Model, teacher: keras.Model | None, temperature: float, alpha: float
) -> keras.Model:
    """The model to fit: `model` itself, or a `Distiller` around it when there is a teacher."""
    if teacher is None:
        return model
    return Distiller(student=model, teacher=teacher, temperature=temperature, alpha=alpha)


def prune_and_finetune(
    model: keras.Model,
    x,
    y=None,
    *,
    sparsity: float | dict[str, float],
    pruning_epochs: int,
    finetune_epochs: int,
    batch_size: int = 32,
    pruning_frequency: int | None = None,
    learning_rate: float | None = None,
    calibration_batches: int = 4,
    strip: bool = False,
    fit_kwargs: dict | None = None,
    teacher: keras.Model | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    **prune_kwargs,
) -> keras.Model:
    """Prunes a trained model gradually while retraining it, then fine-tunes at fixed masks.

    1. Prune and retrain: `PolynomialDecay(0, sparsity)` over `pruning_epochs`, compiled like
       `model` (same optimizer settings, loss and metrics). Criteria that need data ("taylor",
       "movement", "wanda") draw calibration batches from `(x, y)`.
    2. Fine-tune: `finetune` for `finetune_epochs`, the learning rate rewound to its start and
       decayed along a cosine to zero.

    Args:
        model: a trained, compiled dense model; it is copied, not changed.
        x, y: training arrays.
        sparsity: the final sparsity, in [0, 1); or `{layer name: sparsity}` (from
            `tfsparse.auto_sparsity`), each named layer pruned to its own, the others not at all.
        pruning_epochs: epochs over which sparsity rises from 0 to `sparsity`.
        finetune_epochs: epochs of fine-tuning at the final masks (0 to skip).
        batch_size: training batch size.
        pruning_frequency: steps between mask updates; defaults to 1/20 of the pruning steps.
        learning_rate: the fine-tuning learning rate to start from; defaults to the model's.
        calibration_batches: batches drawn per mask update for "taylor", "movement" and "wanda".
        strip: return the plain model (`strip_pruning`) instead of the pruned one.
        fit_kwargs: further `fit` arguments for both phases (`verbose`, `validation_data`, ...).
        teacher: a model to distill from in both phases (e.g. `model` itself), or None.
        temperature: the distillation temperature (with `teacher`).
        alpha: the weight of the distillation loss (with `teacher`).
        **prune_kwargs: `prune_low_magnitude` arguments: `criterion`, `scope`, `regularizer`,
            `score_normalization`, `min_density`, `block_size`, `sparsity_m_by_n`.

    Returns:
        The pruned, fine-tuned copy of `model` (plain if `strip`).

    Example:

    ```python
    pruned = tfsparse.prune_and_finetune(
        model, x, y, sparsity=0.9, pruning_epochs=10, finetune_epochs=5, scope="global")
    ```
    """
    if not model.get_compile_config():
        raise ValueError(
            f"Model '{model.name}' must be compiled: its optimizer, loss and metrics are reused."
        )
    for name, value in (sparsity if isinstance(sparsity, dict) else {"": sparsity}).items():
        if not 0.0 <= value < 1.0:
            where = f" of layer '{name}'" if name else ""
            raise ValueError(f"Argument `sparsity`{where} must be in [0, 1). Received: sparsity={value}")
    if not isinstance(pruning_epochs, int) or pruning_epochs < 1:
        raise ValueError(
            f"Argument `pruning_epochs` must be a positive integer. Received: pruning_epochs={pruning_epochs}"
        )
    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ValueError(
            f"Argument `finetune_epochs` must be an integer >= 0. Received: finetune_epochs={finetune_epochs}"
        )
    fit_kwargs = dict(fit_kwargs or {})
    pruning_steps = pruning_epochs * _steps_per_epoch(x, batch_size, fit_kwargs)
    frequency = pruning_frequency or max(1, pruning_steps // 20)
    # The last mask update falls inside the pruning phase, so that fine-tuning starts at `sparsity`.
    end_step = (pruning_steps - 1) // frequency * frequency

    def schedule_to(final: float):
        if end_step > 0:
            return PolynomialDecay(0.0, final, begin_step=0, end_step=end_step, frequency=frequency)
        return ConstantSparsity(final, begin_step=0, end_step=0, frequency=frequency)

    if isinstance(sparsity, dict):
        schedule = {name: schedule_to(value) for name, value in sparsity.items() if value > 0}
    else:
        schedule = schedule_to(sparsity)
    pruned = prune_low_magnitude(model, pruning_schedule=schedule, **prune_kwargs)
    pruned.compile(**keras.saving.deserialize_keras_object(model.get_compile_config()))
    trainer = _trainer(pruned, teacher, temperature, alpha)
    if trainer is not pruned:
        trainer.compile(**keras.saving.deserialize_keras_object(model.get_compile_config()))
    needs_data = criteria.get(prune_kwargs.get("criterion", "magnitude")).needs_calibration
    step_callback = UpdatePruningStep(
        calibration_data=(x, y) if needs_data else None,
        calibration_batches=calibration_batches,
        batch_size=batch_size,
    )
    trainer.fit(x, y, epochs=pruning_epochs, batch_size=batch_size, callbacks=[step_callback], **fit_kwargs)
    if finetune_epochs:
        finetune(
            pruned,
            x,
            y,
            epochs=finetune_epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            callbacks=[UpdatePruningStep()],
            teacher=teacher,
            temperature=temperature,
            alpha=alpha,
            **fit_kwargs,
        )
    return strip_pruning(pruned) if strip else pruned
