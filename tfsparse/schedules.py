"""Pruning schedules: when to prune and to what sparsity, as a function of the step.

A schedule is a plain callable from the training step to `(should_prune, sparsity)`. The arithmetic is
done in float32, as tfmot does it, so that both libraries give the same value for the same step.
"""

from __future__ import annotations

import abc
import numbers

import keras
import numpy as np

from tfsparse._config import config_repr


def _check_integer(value, name: str) -> int:
    # bool is an int to Python, but `frequency=True` is a mistake, not a step count.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"Argument `{name}` must be an integer. Received: {name}={value!r} of type {type(value).__name__}"
        )
    return int(value)


def _check_steps(begin_step: int, end_step: int, frequency: int, allow_endless: bool) -> None:
    for value, name in ((begin_step, "begin_step"), (end_step, "end_step"), (frequency, "frequency")):
        _check_integer(value, name)
    if begin_step < 0:
        raise ValueError(f"Argument `begin_step` must be >= 0. Received: begin_step={begin_step}")
    if not allow_endless and end_step == -1:
        raise ValueError(
            "Argument `end_step` cannot be -1 for this schedule: it needs an end to decay "
            f"towards. Received: end_step={end_step}"
        )
    if end_step != -1:
        if end_step < 0:
            raise ValueError(f"Argument `end_step` must be -1 or >= 0. Received: end_step={end_step}")
        if end_step < begin_step:
            raise ValueError(
                "Argument `end_step` must be >= `begin_step` (or -1 to prune forever). "
                f"Received: begin_step={begin_step}, end_step={end_step}"
            )
    if frequency <= 0:
        raise ValueError(f"Argument `frequency` must be > 0. Received: frequency={frequency}")


def _check_sparsity(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Argument `{name}` must be a number in [0, 1). Received: {name}={value!r} of type {type(value).__name__}"
        )
    # The schedule computes in float32, where a value just below 1 rounds up to 1 (every weight).
    if not 0.0 <= value < 1.0 or np.float32(value) >= 1.0:
        raise ValueError(f"Argument `{name}` must be in [0, 1). Received: {name}={value}")


class PruningSchedule(abc.ABC):
    """Base class of pruning schedules.

    Subclasses implement `__call__(step) -> (should_prune, sparsity)` and `get_config()`. The helper
    `_should_prune_in_step` gives the usual "inside [begin_step, end_step] and on a multiple of
    `frequency`" rule.

    Example:

    ```python
    class EveryStepHalf(tfsparse.PruningSchedule):
        def __call__(self, step):
            return True, 0.5

        def get_config(self):
            return {}
    ```
    """

    @abc.abstractmethod
    def __call__(self, step: int) -> tuple[bool, float]:
        """Returns `(should_prune, sparsity)` for the training step `step`."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """Returns the constructor arguments, so that `from_config` rebuilds the schedule."""

    @classmethod
    def from_config(cls, config: dict) -> PruningSchedule:
        return cls(**config)

    @staticmethod
    def _in_pruning_range(step: int, begin_step: int, end_step: int) -> bool:
        return step >= begin_step and (end_step < 0 or step <= end_step)

    @classmethod
    def _should_prune_in_step(cls, step: int, begin_step: int, end_step: int, frequency: int) -> bool:
        return cls._in_pruning_range(step, begin_step, end_step) and (step - begin_step) % frequency == 0

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        return config_repr(self)


@keras.saving.register_keras_serializable(package="tfsparse")
class ConstantSparsity(PruningSchedule):
    """Prune to a constant sparsity every `frequency` steps between `begin_step` and `end_step`.

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: first step at which to prune.
        end_step: last step at which to prune; -1 prunes until training ends.
        frequency: prune every `frequency` steps.

    Example:

    ```python
    schedule = tfsparse.ConstantSparsity(0.8, begin_step=0, frequency=10)
    schedule(20)  # (True, 0.8)
    schedule(25)  # (False, 0.8)
    ```
    """

    def __init__(self, target_sparsity: float, begin_step: int, end_step: int = -1, frequency: int = 100):
        _check_steps(begin_step, end_step, frequency, allow_endless=True)
        _check_sparsity(target_sparsity, "target_sparsity")
        self.target_sparsity = target_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step: int) -> tuple[bool, float]:
        should_prune = self._should_prune_in_step(int(step), self.begin_step, self.end_step, self.frequency)
        return should_prune, float(np.float32(self.target_sparsity))

    def get_config(self) -> dict:
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfsparse")
class PolynomialDecay(PruningSchedule):
    """Raise sparsity from `initial_sparsity` to `final_sparsity` along a polynomial curve.

    The sparsity at step `t` is `final + (initial - final) * (1 - p) ** power` with
    `p = clip((t - begin_step) / (end_step - begin_step), 0, 1)`: it grows fast at first and
    flattens towards the end, which gives the network time to recover between prunings.

    `end_step == begin_step` is a single pruning step to `final_sparsity` at `begin_step`
    (`initial_sparsity` before it). tfmot divides by zero there and returns NaN; every other
    configuration gives tfmot's values exactly.

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first step at which to prune.
        end_step: step at which `final_sparsity` is reached (must not be -1).
        power: exponent of the curve, >= 0.
        frequency: prune every `frequency` steps.

    Example:

    ```python
    schedule = tfsparse.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
    schedule(1000)  # (True, 0.9)
    ```
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        _check_steps(begin_step, end_step, frequency, allow_endless=False)
        _check_sparsity(initial_sparsity, "initial_sparsity")
        _check_sparsity(final_sparsity, "final_sparsity")
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or not 0 <= power < float("inf"):
            raise ValueError(f"Argument `power` must be a finite number >= 0. Received: power={power!r}")
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency

    def __call__(self, step: int) -> tuple[bool, float]:
        should_prune = self._should_prune_in_step(int(step), self.begin_step, self.end_step, self.frequency)
        if self.end_step == self.begin_step:  # one step, straight to the final sparsity
            sparsity = self.final_sparsity if int(step) >= self.begin_step else self.initial_sparsity
            return should_prune, float(np.float32(sparsity))
        f32 = np.float32
        with np.errstate(divide="ignore", invalid="ignore"):
            progress = f32(int(step) - self.begin_step) / f32(self.end_step - self.begin_step)
            progress = np.minimum(f32(1.0), np.maximum(f32(0.0), progress))
            # TensorFlow's float32 pow is correctly rounded; numpy's float32 pow can be one ulp
            # off, so the power is taken in float64 and rounded once.
            decay = f32(np.power(np.float64(f32(1.0) - progress), np.float64(self.power)))
            sparsity = f32(self.initial_sparsity - self.final_sparsity) * decay + f32(self.final_sparsity)
        return should_prune, float(sparsity)

    def get_config(self) -> dict:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }
