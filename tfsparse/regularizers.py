"""Sparsity-inducing penalties held by pruning wrappers, with a strength that can follow a schedule.

Pass one as `prune_low_magnitude(model, regularizer=tfsparse.regularizers.L1(1e-4))`: every pruned
weight (kernels, not biases) is penalized, on its masked value, and the penalty is added to the
model's losses like a Keras regularizer's. The strength is a number or a schedule of the wrapper's
`pruning_step` (`RampSchedule`, or any Keras learning-rate schedule), so a penalty can push weights
toward zero early in training and switch off before fine-tuning. `strip_pruning` drops it.
"""

from __future__ import annotations

import abc
import math

import keras
from keras import ops

from tfsparse._config import config_repr

GROUPS = ("rows", "columns", "filters")


def _check_strength(strength, name: str = "strength"):
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        if not math.isfinite(strength) or strength < 0:
            raise ValueError(f"Argument `{name}` must be a finite number >= 0. Received: {name}={strength}")
        return float(strength)
    if callable(strength) and hasattr(strength, "get_config"):
        return strength
    raise ValueError(
        f"Argument `{name}` must be a number >= 0 or a serializable schedule of the pruning step "
        f"(e.g. `tfsparse.regularizers.RampSchedule`). Received: {name}={strength!r}"
    )


@keras.saving.register_keras_serializable(package="tfsparse")
class RampSchedule:
    """A strength that is 0 up to `begin_step`, rises linearly to `peak` at `ramp_end_step`, stays
    there, and drops back to 0 after `end_step` (-1 keeps it on).

    Args:
        peak: the strength reached at `ramp_end_step`, >= 0.
        begin_step: step at which the ramp starts (the strength is 0 up to it).
        ramp_end_step: step at which `peak` is reached (>= `begin_step`).
        end_step: last step with a non-zero strength, or -1 for never off.

    Example:

    ```python
    schedule = tfsparse.regularizers.RampSchedule(1e-4, begin_step=0, ramp_end_step=100, end_step=500)
    float(schedule(50))  # 5e-05
    float(schedule(600))  # 0.0
    ```
    """

    def __init__(self, peak: float, begin_step: int = 0, ramp_end_step: int = 0, end_step: int = -1):
        _check_strength(peak, "peak")
        if begin_step < 0:
            raise ValueError(f"Argument `begin_step` must be >= 0. Received: begin_step={begin_step}")
        if ramp_end_step < begin_step:
            raise ValueError(
                "Argument `ramp_end_step` must be >= `begin_step`. "
                f"Received: begin_step={begin_step}, ramp_end_step={ramp_end_step}"
            )
        if end_step != -1 and end_step < ramp_end_step:
            raise ValueError(
                "Argument `end_step` must be -1 or >= `ramp_end_step`. "
                f"Received: ramp_end_step={ramp_end_step}, end_step={end_step}"
            )
        self.peak = float(peak)
        self.begin_step = int(begin_step)
        self.ramp_end_step = int(ramp_end_step)
        self.end_step = int(end_step)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        ramp = max(self.ramp_end_step - self.begin_step, 1)
        rising = ops.clip((step - self.begin_step) / ramp, 0.0, 1.0)
        if self.ramp_end_step == self.begin_step:
            rising = ops.cast(step >= self.begin_step, "float32")
        value = self.peak * rising
        if self.end_step >= 0:
            value = ops.where(step > self.end_step, 0.0, value)
        return value

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "begin_step": self.begin_step,
            "ramp_end_step": self.ramp_end_step,
            "end_step": self.end_step,
        }

    @classmethod
    def from_config(cls, config: dict) -> RampSchedule:
        return cls(**config)


class Regularizer(abc.ABC):
    """Base class: `strength(step) * penalty(weight)`, added to the loss by the pruning wrapper.

    Subclasses implement `penalty(weight)` with `keras.ops` and extend `get_config`.

    Args:
        strength: a number >= 0, or a serializable callable of the pruning step such as
            `RampSchedule` or a `keras.optimizers.schedules.LearningRateSchedule`.

    Example:

    ```python
    class L4(tfsparse.regularizers.Regularizer):
        def penalty(self, weight):
            return keras.ops.sum(weight**4)
    ```
    """

    def __init__(self, strength=1e-4):
        self.strength = _check_strength(strength)

    def strength_at(self, step):
        """The strength at pruning step `step` (a tensor or an int)."""
        if isinstance(self.strength, float):
            return ops.convert_to_tensor(self.strength, "float32")
        return ops.cast(self.strength(step), "float32")

    @abc.abstractmethod
    def penalty(self, weight):
        """The penalty of one weight at unit strength, a scalar tensor."""

    def __call__(self, weight, step=0):
        """`strength_at(step) * penalty(weight)`, in float32."""
        return self.strength_at(step) * self.penalty(ops.cast(weight, "float32"))

    def get_config(self) -> dict:
        strength = self.strength
        if not isinstance(strength, float):
            strength = keras.saving.serialize_keras_object(strength)
        return {"strength": strength}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        if isinstance(config.get("strength"), dict):
            config["strength"] = keras.saving.deserialize_keras_object(config["strength"])
        return cls(**config)

    def __repr__(self) -> str:
        return config_repr(self)


@keras.saving.register_keras_serializable(package="tfsparse")
class L1(Regularizer):
    """`strength * sum(|w|)`: drives unimportant weights to (near) zero.

    Example:

    ```python
    pruned = tfsparse.prune_low_magnitude(model, regularizer=tfsparse.regularizers.L1(1e-4))
    ```
    """

    def penalty(self, weight):
        return ops.sum(ops.abs(weight))


@keras.saving.register_keras_serializable(package="tfsparse")
class L2(Regularizer):
    """`strength * sum(w**2)`: shrinks all weights, large ones most.

    Example:

    ```python
    pruned = tfsparse.prune_low_magnitude(model, regularizer=tfsparse.regularizers.L2(1e-4))
    ```
    """

    def penalty(self, weight):
        return ops.sum(ops.square(weight))


@keras.saving.register_keras_serializable(package="tfsparse")
class ElasticNet(Regularizer):
    """`strength * (l1_ratio * sum(|w|) + (1 - l1_ratio) * sum(w**2))`.

    Args:
        strength: a number >= 0 or a schedule of the pruning step.
        l1_ratio: the share of L1 in the penalty, in [0, 1].

    Example:

    ```python
    regularizer = tfsparse.regularizers.ElasticNet(1e-4, l1_ratio=0.7)
    ```
    """

    def __init__(self, strength=1e-4, l1_ratio: float = 0.5):
        super().__init__(strength)
        if not 0.0 <= l1_ratio <= 1.0:
            raise ValueError(f"Argument `l1_ratio` must be in [0, 1]. Received: l1_ratio={l1_ratio}")
        self.l1_ratio = float(l1_ratio)

    def penalty(self, weight):
        return self.l1_ratio * ops.sum(ops.abs(weight)) + (1.0 - self.l1_ratio) * ops.sum(ops.square(weight))

    def get_config(self) -> dict:
        return {**super().get_config(), "l1_ratio": self.l1_ratio}


@keras.saving.register_keras_serializable(package="tfsparse")
class GroupLasso(Regularizer):
    """`strength * sum_g sqrt(size_g) * ||w_g||_2`: zeroes whole groups of weights together.

    The L2 norm inside a group and the sum (L1) across groups push entire groups to zero, which is
    what structured pruning then removes. Groups of a kernel with inputs on axis -2 and outputs on
    axis -1 (Dense, convolutions):

    - "rows": one group per input unit or channel, `w[..., i, :]`;
    - "columns": one group per output unit or filter, `w[..., j]`;
    - "filters": one group per spatial filter of a convolution, `w[..., i, j]` (the kernel
      window joining input channel i to output channel j); on a rank-2 kernel every weight is its
      own group, which is L1.

    A rank-1 weight is one group.

    Args:
        strength: a number >= 0 or a schedule of the pruning step.
        groups: "rows", "columns" or "filters".

    Example:

    ```python
    regularizer = tfsparse.regularizers.GroupLasso(1e-3, groups="columns")
    ```
    """

    def __init__(self, strength=1e-4, groups: str = "columns"):
        super().__init__(strength)
        if groups not in GROUPS:
            raise ValueError(f"Argument `groups` must be one of {GROUPS}. Received: groups={groups!r}")
        self.groups = groups

    def penalty(self, weight):
        rank = len(weight.shape)
        if rank < 2:
            reduce_axes = tuple(range(rank))
        elif self.groups == "rows":
            reduce_axes = tuple(a for a in range(rank) if a != rank - 2)
        elif self.groups == "columns":
            reduce_axes = tuple(range(rank - 1))
        else:
            reduce_axes = tuple(range(rank - 2))
        size = math.prod(int(weight.shape[a]) for a in reduce_axes)
        if not reduce_axes:
            return ops.sum(ops.abs(weight))
        # The epsilon keeps the gradient finite at a group that is exactly zero.
        norms = ops.sqrt(ops.sum(ops.square(weight), axis=reduce_axes) + 1e-12)
        return math.sqrt(size) * ops.sum(norms)

    def get_config(self) -> dict:
        return {**super().get_config(), "groups": self.groups}


def check(regularizer) -> Regularizer | None:
    """Validates the `regularizer` argument of a pruning wrapper."""
    if regularizer is None or isinstance(regularizer, Regularizer):
        return regularizer
    raise ValueError(
        "Argument `regularizer` must be None or a `tfsparse.regularizers` regularizer: L1, L2, "
        f"ElasticNet or GroupLasso. Received: regularizer={regularizer!r}"
    )
