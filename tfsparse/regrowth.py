"""Dynamic sparse training: at fixed sparsity, drop the weakest active weights and regrow as many.

`Regrowth` says how (RigL: regrow where the loss gradient is largest; SET: regrow at random), how
many (a fraction of the active weights, decayed along a cosine until `end_step`) and with which
seed. `drop_and_grow` is the pure numpy step on one mask. `mask_updates` calls it at every mask
update after a layer has reached its target sparsity, and `dense_gradients` measures the gradients
RigL grows by, at pruned positions too, on `UpdatePruningStep(calibration_data=...)`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import keras
import numpy as np

from tfsparse._config import config_repr
from tfsparse.masking import num_zeros

METHODS = ("rigl", "set")
DECAYS = ("cosine", "constant")


@keras.saving.register_keras_serializable(package="tfsparse")
class Regrowth:
    """How a pruned layer moves its sparsity during training once it has reached its target.

    At each mask update after the target sparsity is reached, the `fraction_at(step)` share of the
    active weights with the lowest scores (the layer's criterion, magnitude by default) is dropped
    and as many inactive weights are regrown, at zero: where the loss gradient is largest
    ("rigl", Evci et al. 2020; gradients from `UpdatePruningStep(calibration_data=...)`) or at
    random ("set", Mocanu et al. 2018). The number of zeros never changes.

    Args:
        method: "rigl" (grow by gradient magnitude) or "set" (grow at random).
        fraction: share of the active weights moved at each update, in (0, 1]; RigL uses 0.3.
        end_step: last pruning step at which weights move; -1 moves them until training ends
            (and then nothing decays).
        decay: "cosine" (`fraction * (1 + cos(pi * step / end_step)) / 2`, as RigL) or "constant".
        seed: seed of SET's random choice. The draw depends only on the seed, the layer's name
            and the step, so a resumed run draws the same (RigL breaks ties by position).

    Example:

    ```python
    pruned = tfsparse.prune_low_magnitude(
        model,
        pruning_schedule=tfsparse.ConstantSparsity(0.9, begin_step=0, frequency=100),
        regrowth=tfsparse.Regrowth("rigl", fraction=0.3, end_step=3000),
    )
    pruned.fit(x, y, callbacks=[tfsparse.UpdatePruningStep(calibration_data=(x, y))])
    ```
    """

    def __init__(
        self,
        method: str = "rigl",
        fraction: float = 0.3,
        end_step: int = -1,
        decay: str = "cosine",
        seed: int = 0,
    ):
        if method not in METHODS:
            raise ValueError(f"Argument `method` must be one of {METHODS}. Received: method={method!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"Argument `fraction` must be in (0, 1]. Received: fraction={fraction}")
        if not isinstance(end_step, int) or end_step < -1 or end_step == 0:
            raise ValueError(
                f"Argument `end_step` must be -1 (no end) or a positive step. Received: end_step={end_step}"
            )
        if decay not in DECAYS:
            raise ValueError(f"Argument `decay` must be one of {DECAYS}. Received: decay={decay!r}")
        if not isinstance(seed, int):
            raise ValueError(f"Argument `seed` must be an integer. Received: seed={seed!r}")
        self.method = method
        self.fraction = float(fraction)
        self.end_step = end_step
        self.decay = decay
        self.seed = seed

    @property
    def needs_gradients(self) -> bool:
        """Whether regrowing needs gradients measured on calibration data (RigL)."""
        return self.method == "rigl"

    def fraction_at(self, step: int) -> float:
        """The share of active weights moved at pruning step `step` (0 after `end_step`).

        Example:

        ```python
        Regrowth("rigl", fraction=0.3, end_step=100).fraction_at(50)  # 0.15
        ```
        """
        if self.end_step == -1:
            return self.fraction
        if step > self.end_step:
            return 0.0
        if self.decay == "constant":
            return self.fraction
        return self.fraction * 0.5 * (1.0 + math.cos(math.pi * step / self.end_step))

    def get_config(self) -> dict:
        return {
            "method": self.method,
            "fraction": self.fraction,
            "end_step": self.end_step,
            "decay": self.decay,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> Regrowth:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        return config_repr(self)


def get(regrowth) -> Regrowth | None:
    """A `Regrowth` from None, "rigl", "set" or a `Regrowth`; `ValueError` otherwise.

    Example:

    ```python
    get("set")  # Regrowth(method='set', fraction=0.3, end_step=-1, decay='cosine', seed=0)
    ```
    """
    if regrowth is None or isinstance(regrowth, Regrowth):
        return regrowth
    if isinstance(regrowth, str) and regrowth in METHODS:
        return Regrowth(regrowth)
    raise ValueError(
        f"Argument `regrowth` must be None, one of {METHODS} or a `tfsparse.Regrowth`. Received: regrowth={regrowth!r}"
    )


def _lowest(scores: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """Flat indices of the `count` lowest scores among `candidates`, the earlier position first on ties."""
    order = np.lexsort((candidates, scores[candidates]))
    return candidates[order[:count]]


def drop_and_grow(
    mask: np.ndarray, drop_scores: np.ndarray, grow_scores: np.ndarray, fraction: float
) -> np.ndarray:
    """Moves `round(fraction * active)` weights of `mask`: the lowest `drop_scores` among the active
    ones leave, the highest `grow_scores` among the rest (those just dropped included) come in.

    The number of zeros is unchanged. Equal scores go in position order, so the result is
    deterministic. A weight that is dropped and regrown at once simply stays.

    Args:
        mask: the current mask, 0.0 or 1.0.
        drop_scores: scores of the weights (lower leaves first), same shape as `mask`.
        grow_scores: scores of the weights (higher comes in first), same shape as `mask`.
        fraction: share of the active weights to move, in [0, 1].

    Returns:
        The new mask, same shape and number of zeros as `mask`.

    Example:

    ```python
    drop_and_grow(np.array([1.0, 1.0, 0.0, 0.0]), drop_scores=np.array([2.0, 1.0, 0.0, 0.0]),
                  grow_scores=np.array([0.0, 0.0, 0.1, 5.0]), fraction=0.5)  # [1, 0, 0, 1]
    ```
    """
    flat = np.asarray(mask).ravel() > 0
    active = np.flatnonzero(flat)
    count = int(round(fraction * active.size))
    if count == 0:
        return np.asarray(mask, dtype=np.float32).copy()
    drop = _lowest(np.asarray(drop_scores, dtype=np.float64).ravel(), active, count)
    kept = flat.copy()
    kept[drop] = False
    candidates = np.flatnonzero(~kept)
    grow = _lowest(-np.asarray(grow_scores, dtype=np.float64).ravel(), candidates, count)
    kept[grow] = True
    return kept.astype(np.float32).reshape(np.shape(mask))


def random_scores(shape: Sequence[int], seed: int, layer_name: str, step: int, index: int) -> np.ndarray:
    """Uniform random scores drawn from `(seed, layer_name, step, index)` alone, so reruns agree."""
    key = [seed, zlib.crc32(layer_name.encode("utf-8")), int(step), int(index)]
    return np.random.default_rng(key).random(tuple(shape))


def dense_gradients(wrappers: Sequence, calibration) -> list[list[np.ndarray]]:
    """`sum_b |dL_b / d(w * mask)|` for every pruned weight of `wrappers`, at pruned positions too.

    A layer runs on `weight * mask`, so the gradient of a stored weight is zero where its mask is.
    The masks are opened for the measurement: the stored pruned weights are zeroed first (an
    optimizer's momentum can move them), so the outputs are exactly those of the masked model;
    the masks are restored afterwards.

    Args:
        wrappers: `PruneLowMagnitude` layers of `calibration.model`.
        calibration: a `tfsparse.calibration.Calibration`, or None (then `ValueError`).

    Returns:
        Per wrapper, one array per pruned weight.

    Example:

    ```python
    gradients = dense_gradients(collect_wrappers(pruned), Calibration(pruned, (x, y)))
    ```
    """
    if not wrappers:
        return []
    if calibration is None:
        raise ValueError(
            f"Layer '{wrappers[0].name}' regrows weights with RigL, which grows where the loss gradient "
            "is largest. Pass `tfsparse.UpdatePruningStep(calibration_data=(x, y))` (a few batches of "
            "training data), or use regrowth='set'. Received: calibration_data=None"
        )
    saved = [wrapper.get_masks() for wrapper in wrappers]
    for wrapper, masks in zip(wrappers, saved):
        wrapper.set_masks(masks)
        wrapper.set_masks([np.ones_like(m) for m in masks])
    try:
        flat = calibration.gradient_magnitudes([v for w in wrappers for v in w.pruned_weights])
    finally:
        for wrapper, masks in zip(wrappers, saved):
            wrapper.set_masks(masks)
    gradients = iter(flat)
    return [[next(gradients) for _ in wrapper.pruned_weights] for wrapper in wrappers]


def regrown_masks(
    wrapper, drop_scores: list[np.ndarray], gradients: list[np.ndarray] | None
) -> list[np.ndarray]:
    """The new masks of one wrapper at its current step, from its criterion's scores (and gradients).

    Args:
        wrapper: a `PruneLowMagnitude` with a `regrowth`.
        drop_scores: per pruned weight, the criterion's scores (pruned weights at -inf).
        gradients: per pruned weight, dense gradient magnitudes (RigL), or None (SET).

    Returns:
        One mask per pruned weight, each with as many zeros as before.
    """
    regrowth = wrapper.regrowth
    step = wrapper.get_pruning_step()
    fraction = regrowth.fraction_at(step)
    masks = []
    for index, (mask, scores) in enumerate(zip(wrapper.get_masks(), drop_scores)):
        if gradients is None:
            grow_scores = random_scores(mask.shape, regrowth.seed, wrapper.name, step, index)
        else:
            grow_scores = gradients[index]
        masks.append(drop_and_grow(mask, scores, grow_scores, fraction))
    return masks


def set_regrown_masks(wrapper, masks: list[np.ndarray]) -> None:
    """Sets new masks so that every weight that comes back starts at zero, and kept ones keep their value."""
    wrapper.set_masks([old * new for old, new in zip(wrapper.get_masks(), masks)])
    wrapper.set_masks(masks)


def moves_now(wrapper) -> bool:
    """Whether `wrapper` has a regrowth that still moves weights at its current step."""
    regrowth = getattr(wrapper, "regrowth", None)
    return regrowth is not None and regrowth.fraction_at(wrapper.get_pruning_step()) > 0.0


def reached(masks: Sequence[np.ndarray], sparsity: float) -> bool:
    """Whether `masks` together already have the `round(sparsity * size)` zeros `sparsity` asks for."""
    size = sum(m.size for m in masks)
    return sum(int(np.count_nonzero(m == 0)) for m in masks) == num_zeros(size, sparsity)
