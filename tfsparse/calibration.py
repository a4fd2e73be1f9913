"""Calibration data run through a pruned model: gradients for "taylor" and "movement", input norms
for "wanda".

`UpdatePruningStep(calibration_data=...)` and `prune_oneshot(..., data)` build a `Calibration`, and
`mask_updates` asks it for what a criterion needs only when masks are recomputed, so training steps
cost the same whatever the criterion. From arrays, each mask update draws fresh random batches (an
estimate over recent training data when the arrays are the training set); from an iterable of
batches, the first `batches` of a new pass are used.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np
from keras import ops

from tfsparse import _gradients


def _as_arrays(data) -> tuple | None:
    """`(x, y)` from an array, a tuple of arrays, or None when `data` is an iterable of batches."""
    if isinstance(data, np.ndarray) or ops.is_tensor(data):
        return (data, None)
    if isinstance(data, (tuple, list)) and 1 <= len(data) <= 3 and all(hasattr(d, "shape") for d in data):
        return (data[0], data[1] if len(data) > 1 else None)
    return None


def _length(array) -> int:
    return int(array.shape[0]) if len(array.shape) else 0


def check_samples(x, y, where: str = "calibration_data") -> None:
    """Refuses calibration data with no samples, or with a different number of inputs and targets.

    Args:
        x: the inputs (an array or tensor).
        y: the targets, or None.
        where: how to name the data in the message.

    Example:

    ```python
    check_samples(x_train[:0], y_train[:0])  # ValueError: ... has no samples ...
    ```
    """
    if _length(x) == 0:
        raise ValueError(
            f"Argument `{where}` has no samples (x of shape {tuple(x.shape)}): criteria that score on "
            "data would rank every weight alike and prune by position. Pass a few batches of real "
            "inputs (e.g. `(x_train[:256], y_train[:256])`)."
        )
    if y is not None and _length(y) != _length(x):
        raise ValueError(
            f"Argument `{where}` must have as many targets as inputs. Received: x with {_length(x)} "
            f"samples, y with {_length(y)}"
        )
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.inexact):
        nans = int(np.count_nonzero(np.isnan(x)))
        if nans:
            raise ValueError(
                f"Argument `{where}` holds {nans} NaN input values; they would make the scores of "
                "every layer they reach NaN. Remove or impute them (`np.isfinite(x).all()` must hold)."
            )


def _split(batch) -> tuple:
    if isinstance(batch, (tuple, list)):
        return (batch[0], batch[1] if len(batch) > 1 else None)
    return (batch, None)


def _take(array, index: np.ndarray):
    if array is None:
        return None
    if isinstance(array, np.ndarray):
        return array[index]
    return ops.take(array, index, axis=0)


def resolve_loss(model: keras.Model, loss=None):
    """The loss to differentiate: `loss` if given, else the one `model` was compiled with."""
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                f"Gradient-based pruning needs a loss: compile model '{model.name}' or pass `loss=`. Received: loss=None"
            )
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                f"Model '{model.name}' was compiled with several losses; pass the one to prune with as "
                f"`loss=`. Received: loss={loss!r}"
            )
    return keras.losses.get(loss)


class Calibration:
    """Measures, on calibration data, what data-driven criteria score weights with.

    Args:
        model: the pruned model (with `PruneLowMagnitude` layers) the data runs through.
        data: `x`, `(x, y)` or `(x, y, sample_weight)` arrays, or an iterable of such batches
            (a `tf.data.Dataset`, a `keras.utils.PyDataset`, a list).
        batches: how many batches to use per measurement; None uses all of `data`.
        batch_size: the batch size when `data` are arrays.
        loss: the loss for gradients; defaults to the model's compiled loss.
        seed: seed of the random batches drawn from arrays.

    Example:

    ```python
    calibration = Calibration(pruned, (x_train, y_train), batches=4)
    mask_updates.prune_to(collect_wrappers(pruned), lambda w: 0.8, calibration)
    ```
    """

    def __init__(
        self,
        model: keras.Model,
        data,
        batches: int | None = 4,
        batch_size: int = 32,
        loss=None,
        seed: int = 0,
    ):
        if batches is not None and (not isinstance(batches, int) or batches < 1):
            raise ValueError(
                f"Argument `batches` must be a positive integer or None. Received: batches={batches}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"Argument `batch_size` must be a positive integer. Received: batch_size={batch_size}"
            )
        arrays = _as_arrays(data)
        if arrays is None and not isinstance(data, Iterable):
            raise ValueError(
                "Argument `calibration_data` must be an array, a tuple `(x, y)` of arrays, or an iterable "
                f"of batches. Received: calibration_data of type {type(data).__name__}"
            )
        if arrays is not None:
            check_samples(*arrays)
        self.model = model
        self.data = data
        self.batches = batches
        self.batch_size = batch_size
        self.loss = loss
        self._arrays = arrays
        self._rng = np.random.default_rng(seed)

    def _draw(self) -> list[tuple]:
        if self._arrays is None:
            drawn = []
            for batch in self.data:
                drawn.append(_split(batch))
                check_samples(*drawn[-1], where=f"calibration_data (batch {len(drawn) - 1})")
                if self.batches is not None and len(drawn) >= self.batches:
                    break
            if not drawn:
                raise ValueError(
                    "Argument `calibration_data` gave no batches: criteria that score on data need at "
                    "least one. Pass a non-empty iterable of `(x, y)` batches, or arrays."
                )
            return drawn
        x, y = self._arrays
        size = int(x.shape[0])
        if self.batches is None:
            starts = range(0, size, self.batch_size)
            picks = [np.arange(s, min(s + self.batch_size, size)) for s in starts]
        else:
            picks = [
                self._rng.choice(size, min(self.batch_size, size), replace=False) for _ in range(self.batches)
            ]
        return [(_take(x, np.sort(index)), _take(y, np.sort(index))) for index in picks]

    def gradient_magnitudes(self, variables) -> list[np.ndarray]:
        """`sum_b |dL_b / dv|` over a draw of batches, for each of `variables`."""
        batches = self._labelled_draw()
        loss_fn = resolve_loss(self.model, self.loss)
        return _gradients.gradient_sums(self.model, variables, batches, loss_fn, absolute=True)

    def _labelled_draw(self) -> list[tuple]:
        batches = self._draw()
        if any(y is None for _, y in batches):
            raise ValueError(
                "Gradient-based criteria need labels: pass `calibration_data=(x, y)`. Received data without targets."
            )
        return batches

    def gradient_sums(self, variables) -> list[np.ndarray]:
        """`sum_b dL_b / dv` (signed) over a draw of batches, for each of `variables`."""
        batches = self._labelled_draw()
        return _gradients.gradient_sums(self.model, variables, batches, resolve_loss(self.model, self.loss))

    def input_norms(self, wrappers) -> dict[int, np.ndarray]:
        """The L2 norm of each input feature (last axis, or the channel axis) of every wrapper, by id.

        Wrappers not reached by the data, or with inputs of several tensors, are left out.
        """
        sums: dict[int, np.ndarray] = {}

        def observer_for(wrapper):
            channels_first = getattr(wrapper.layer, "data_format", None) == "channels_first"

            def observe(inputs):
                if not (ops.is_tensor(inputs) or isinstance(inputs, np.ndarray)):
                    return
                rank = len(inputs.shape)
                channel = 1 if channels_first and rank > 2 else rank - 1
                axes = tuple(a for a in range(rank) if a != channel)
                squares = ops.convert_to_numpy(ops.sum(ops.square(ops.cast(inputs, "float32")), axis=axes))
                sums[id(wrapper)] = sums.get(id(wrapper), 0.0) + squares.astype(np.float64)

            return observe

        for wrapper in wrappers:
            wrapper.set_input_observer(observer_for(wrapper))
        try:
            for x, _ in self._draw():
                self.model(x, training=False)
        finally:
            for wrapper in wrappers:
                wrapper.set_input_observer(None)
        return {key: np.sqrt(value).astype(np.float32) for key, value in sums.items()}
