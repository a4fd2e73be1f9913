"""Callbacks that drive pruning inside `model.fit()`: the step and masks, and TensorBoard summaries."""

from __future__ import annotations

import os

import keras
import numpy as np

from tfsparse import criteria, mask_updates
from tfsparse.calibration import Calibration
from tfsparse.wrapper import no_step_driver_message


class UpdatePruningStep(keras.callbacks.Callback):
    """Advances the pruning step of every pruned layer and recomputes masks when schedules say so.

    Required when fitting a model made by `prune_low_magnitude`. The step is kept in each layer
    (and saved with the model), so a model loaded from a checkpoint continues its schedule.

    Criteria that score weights on data ("taylor": gradients, "movement": signed gradients summed
    into its score, "wanda": input norms) take them from `calibration_data`, measured only when
    masks are recomputed: at each mask update a few random batches are drawn (pass the training
    arrays to score on recent training data), so the training steps themselves cost the same as
    with "magnitude".

    Args:
        calibration_data: `(x, y)` arrays or an iterable of `(x, y)` batches, for criteria
            "taylor", "movement" and "wanda" (x alone suffices for "wanda") and for
            `regrowth="rigl"`; None otherwise.
        calibration_batches: batches drawn per mask update.
        batch_size: size of the batches drawn from arrays.
        loss: the loss for gradients; defaults to the model's compiled loss.

    Example:

    ```python
    pruned.fit(x, y, epochs=2, callbacks=[tfsparse.UpdatePruningStep()])
    taylor.fit(x, y, epochs=2, callbacks=[tfsparse.UpdatePruningStep(calibration_data=(x, y))])
    ```

    In a custom training loop, call the hooks yourself:

    ```python
    step_callback = tfsparse.UpdatePruningStep()
    step_callback.set_model(pruned)
    step_callback.on_train_begin()
    for batch, (x, y) in enumerate(dataset):
        step_callback.on_train_batch_begin(batch)
        train_step(x, y)
    step_callback.on_train_end()
    ```
    """

    def __init__(self, calibration_data=None, calibration_batches: int = 4, batch_size: int = 32, loss=None):
        super().__init__()
        self.calibration_data = calibration_data
        self.calibration_batches = calibration_batches
        self.batch_size = batch_size
        self.loss = loss
        self._calibration = None
        self._wrappers = []
        self._step = 0

    def on_train_begin(self, logs=None):
        mask_updates.sync_backend_state(self.model)
        self._wrappers = mask_updates.collect_wrappers(self.model)
        self._step = self._stored_step()
        self._calibration = self._make_calibration()
        refused = [wrapper.set_step_driven(True) for wrapper in self._wrappers]
        if not self._wrappers or not hasattr(self.model, "make_train_function"):
            return  # a custom training loop: the layers check for the driver themselves
        if any(refused):
            # A fit without this callback failed while tracing; its compiled step is unusable.
            self.model.make_train_function(force=True)
        if not isinstance(self.model.train_function, _RequiresStepDriver):
            self.model.train_function = _RequiresStepDriver(self.model.train_function, self._wrappers)

    def _make_calibration(self) -> Calibration | None:
        wanting = [
            w
            for w in self._wrappers
            if criteria.get(w.criterion).needs_calibration and not self._schedule_ended(w)
        ]
        regrowing = [w for w in self._wrappers if _regrows_by_gradient(w) and not self._schedule_ended(w)]
        if self.calibration_data is None and regrowing:
            raise ValueError(
                f"Layer '{regrowing[0].name}' regrows weights with RigL, which grows where the loss "
                "gradient is largest. Pass `tfsparse.UpdatePruningStep(calibration_data=(x, y))` (e.g. "
                "the training arrays), or use regrowth='set'. Received: calibration_data=None"
            )
        if self.calibration_data is None:
            if wanting:
                raise ValueError(
                    f"Layer '{wanting[0].name}' is pruned with criterion {wanting[0].criterion!r}, which "
                    "scores weights on data. Pass `tfsparse.UpdatePruningStep(calibration_data=(x, y))` "
                    "(e.g. the training arrays). Received: calibration_data=None"
                )
            return None
        return Calibration(
            self.model, self.calibration_data, self.calibration_batches, self.batch_size, self.loss
        )

    def _schedule_ended(self, wrapper) -> bool:
        end_step = getattr(wrapper.pruning_schedule, "end_step", -1)
        return 0 <= end_step < self._step

    def _stored_step(self) -> int:
        built = [wrapper for wrapper in self._wrappers if wrapper.built]
        return max((wrapper.get_pruning_step() for wrapper in built), default=0)

    # Only batch-begin hooks: a callback with an `on_train_batch_end` makes Keras wait for every
    # step to finish before starting the next one, which costs more than the pruning itself.
    def on_train_batch_begin(self, batch, logs=None):
        if self._wrappers and any(wrapper.pruning_schedule(self._step)[0] for wrapper in self._wrappers):
            mask_updates.sync_backend_state(self.model)
            mask_updates.update_masks([w for w in self._wrappers if w.built], self._step, self._calibration)
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        if self._wrappers:
            mask_updates.sync_backend_state(self.model)
            # The layers count their own steps (several per callback call with
            # `steps_per_execution`); resyncing once an epoch keeps the host count exact.
            self._step = self._stored_step()

    def on_train_end(self, logs=None):
        if self._wrappers:
            # Momentum can move weights after they were masked; the model fit() hands back stores
            # exactly its masked weights. (Outputs never depend on it: layers run on weight * mask.)
            mask_updates.sync_backend_state(self.model)
            mask_updates.reapply_masks([w for w in self._wrappers if w.built])
        for wrapper in self._wrappers:
            wrapper.set_step_driven(False)


def _regrows_by_gradient(wrapper) -> bool:
    return wrapper.regrowth is not None and wrapper.regrowth.needs_gradients


class _RequiresStepDriver:
    """Stands in front of a model's compiled training step, refusing to run it undriven.

    The layers check for `UpdatePruningStep` when the step is traced; a step traced during a fit
    with the callback is kept by Keras for later fits, and this check keeps such a later fit
    without the callback from training on with frozen masks. It costs one flag test per step,
    where tracing the step again for every fit would cost far more.
    """

    def __init__(self, train_function, wrappers):
        self._train_function = train_function
        self._wrappers = wrappers

    def __call__(self, *args, **kwargs):
        for wrapper in self._wrappers:
            if not wrapper.step_driven:
                raise ValueError(no_step_driver_message(wrapper.name))
        return self._train_function(*args, **kwargs)


class PruningSummaries(keras.callbacks.Callback):
    """Writes each pruned weight's sparsity and the schedule's target sparsity to TensorBoard.

    Scalars go to `log_dir/pruning` under `<layer>/<weight>_sparsity` and
    `<layer>/target_sparsity`, plus `pruning_step`, every epoch (or every `update_freq` batches).
    Needs TensorFlow for the event files, as Keras' own TensorBoard callback does.

    Args:
        log_dir: the TensorBoard log directory.
        update_freq: "epoch", or an integer number of batches between writes.

    Example:

    ```python
    pruned.fit(x, y, callbacks=[tfsparse.UpdatePruningStep(), tfsparse.PruningSummaries("logs")])
    ```
    """

    def __init__(self, log_dir: str, update_freq="epoch"):
        super().__init__()
        if update_freq != "epoch" and (not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(
                f'Argument `update_freq` must be "epoch" or a positive integer. Received: update_freq={update_freq!r}'
            )
        if not log_dir:
            raise ValueError(f"Argument `log_dir` must be a directory path. Received: log_dir={log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        import tensorflow as tf  # TensorBoard's event files are written with TensorFlow.

        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "pruning"))
        self._batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        # Written at the start of the next batch (see UpdatePruningStep on batch-end hooks).
        if self.update_freq != "epoch" and self._batches and self._batches % self.update_freq == 0:
            self._write()
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self):
        import tensorflow as tf

        mask_updates.sync_backend_state(self.model)
        wrappers = [w for w in mask_updates.collect_wrappers(self.model) if w.built]
        if not wrappers:
            return
        step = wrappers[0].get_pruning_step()
        with self._writer.as_default(step=step):
            tf.summary.scalar("pruning_step", step)
            for wrapper in wrappers:
                tf.summary.scalar(
                    f"{wrapper.name}/target_sparsity", wrapper.pruning_schedule(max(step - 1, 0))[1]
                )
                for weight, mask in zip(wrapper.pruned_weights, wrapper.get_masks()):
                    tf.summary.scalar(f"{wrapper.name}/{weight.name}_sparsity", 1.0 - float(np.mean(mask)))
        self._writer.flush()
