"""Importance scores of weights: the lower the score, the earlier a weight is pruned.

A criterion is a pure numpy function of a weight and, for some criteria, of inputs measured
elsewhere: `gradient` (|gradient| summed over calibration batches, see `tfsparse.calibration`),
`input_norm` (the L2 norm of each input feature of the layer, also from calibration data) or
`accumulated_score` (movement's `-sum g * w` over the calibration batches of every mask update so
far, kept by the wrapper). `mask_updates` gathers the inputs each criterion declares and turns the
scores into masks.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable

import numpy as np
from keras import ops


def magnitude(weight: np.ndarray) -> np.ndarray:
    """Scores each weight by its absolute value.

    Example:

    ```python
    magnitude(np.array([-3.0, 0.5]))  # array([3. , 0.5])
    ```
    """
    return np.abs(weight)


def taylor(weight: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """First-order Taylor importance: `|w * g|` summed over batches, i.e. `|w| * sum_b |g_b|`.

    Estimates how much the loss changes when the weight is removed. A small weight the loss is
    sensitive to outranks a larger one it ignores.

    Args:
        weight: the weight values.
        gradient: `sum_b |dL/dw|` over recent or calibration batches, same shape as `weight`.

    Returns:
        The scores, same shape as `weight`.

    Example:

    ```python
    taylor(np.array([0.1, 1.0]), gradient=np.array([50.0, 0.01]))  # array([5.  , 0.01])
    ```
    """
    return np.abs(weight) * gradient


def movement(weight: np.ndarray, accumulated_score: np.ndarray) -> np.ndarray:
    """Movement score (Sanh et al., 2020): `S = -sum_t g_t * w_t`, accumulated while pruning.

    Sanh et al. learn a score per weight, keep the weights of the top scores, and pass the gradient
    through the top-k selection unchanged (straight-through), so that the loss gradient of a score
    is `g * w`, with `g` the gradient at the masked weight. Trained by gradient descent from zero,
    the score is `-sum_t g_t * w_t` up to its learning rate: positive for weights that training
    pushes away from zero, negative for weights it pulls toward zero, which are pruned first.

    Here the sum runs over the calibration batches drawn at each mask update (see
    `UpdatePruningStep(calibration_data=...)`) instead of over every training step, so that
    training steps cost what they cost with "magnitude"; the wrapper keeps the sum
    (`movement_step` adds each update's terms) and saves it with the model. As in the paper, the
    straight-through gradient also reaches pruned weights: their scores go on counting, with
    `w` their value when pruned, and a pruned weight whose score rises above a kept one's comes
    back with that value at the next mask update (the weights' count stays the schedule's).

    The score is first-order: it says which weights the loss would like smaller, not how much
    removing them costs. From a model already trained to convergence on the task, the gradient
    is small and the weights it pulls toward zero are pulled together, so removing many of them
    in one mask update can cost far more than removing as many small weights. Recompute masks
    often, as the paper does at every step (a schedule's `frequency=1`; one calibration batch
    per update then sums one batch's `-g * w` per step), so that each update prunes few weights
    and the training in between shows which of them the loss wants back.

    Args:
        weight: the weight values now (pruned weights as zeros); the score already holds what
            it needs of them.
        accumulated_score: `-sum g * w` over the calibration batches of every mask update so far,
            this one included, same shape as `weight`.

    Returns:
        Signed scores, same shape as `weight`.

    Example:

    ```python
    score = movement_step(np.zeros(2), np.array([0.5, -0.2]), gradient=np.array([0.4, 0.1]))
    movement(np.array([0.5, -0.2]), accumulated_score=score)  # array([-0.2 ,  0.02])
    ```
    """
    return np.asarray(accumulated_score, dtype=np.float32)


def movement_step(accumulated_score, weight, gradient):
    """One mask update's term of the movement score: `accumulated_score - gradient * weight`.

    Computed with `keras.ops` where the tensors live (any backend); numpy arrays work too.

    Args:
        accumulated_score: the movement score so far.
        weight: the weight values the gradient multiplies (pruned weights at their value when
            pruned, see `movement`).
        gradient: `sum_b dL_b / dw` over this update's calibration batches, signed.

    Returns:
        The new score, a tensor of the same shape.

    Example:

    ```python
    movement_step(np.zeros(2), np.array([0.5, -0.2]), np.array([0.4, 0.1]))  # [-0.2, 0.02]
    ```
    """
    return ops.subtract(accumulated_score, ops.multiply(gradient, weight))


def wanda(weight: np.ndarray, input_norm: np.ndarray | None = None) -> np.ndarray:
    """Wanda score (Sun et al., 2023): `|w|` times the L2 norm of the input feature it multiplies.

    A weight on an input that is always large matters more than an equal weight on an input that is
    always small. Layers whose inputs do not line up with a kernel axis (embeddings, recurrent and
    attention layers) have no `input_norm` and are scored by magnitude.

    Args:
        weight: the weight values.
        input_norm: the input features' L2 norms over calibration data, shaped to broadcast against
            `weight` along its input axis; None for magnitude.

    Returns:
        The scores, same shape as `weight`.

    Example:

    ```python
    wanda(np.array([[1.0], [1.0]]), input_norm=np.array([[10.0], [0.1]]))  # [[10. ], [ 0.1]]
    ```
    """
    if input_norm is None:
        return np.abs(weight)
    return np.abs(weight) * input_norm


def lamp(scores: np.ndarray) -> np.ndarray:
    """LAMP normalization (Lee et al., 2021): each score squared over the sum of the squares of the
    scores at or above it in its layer.

    Within a layer the order is unchanged; across layers the normalized scores are comparable, so
    that one global threshold gives each layer a sparsity suited to its size and spread. The
    largest score of every layer becomes 1, so no layer is ever emptied. Scores of `-inf` (weights
    already pruned) stay `-inf`. Scores must be non-negative.

    Example:

    ```python
    lamp(np.array([1.0, 2.0, 2.0]))  # array([0.111..., 0.5, 1.])
    ```
    """
    flat = scores.ravel().astype(np.float64)
    kept = np.flatnonzero(np.isfinite(flat))
    normalized = np.full(flat.shape, -np.inf)
    if kept.size:
        order = kept[np.argsort(flat[kept], kind="stable")]
        squares = np.square(flat[order])
        at_or_above = np.cumsum(squares[::-1])[::-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            normalized[order] = np.where(at_or_above > 0, squares / at_or_above, 0.0)
    return normalized.reshape(scores.shape)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A scoring function and what it reads besides the weight.

    Attributes:
        name: the name users pass as `criterion=`.
        score: `score(weight, **inputs) -> scores`.
        inputs: the keyword inputs `score` takes: "gradient", "input_norm", "accumulated_score".
        signed: whether scores can be negative (LAMP normalization needs non-negative scores).
        straight_through: whether pruned weights keep their scores and come back when those rise
            above a kept weight's; otherwise a pruned weight stays pruned.
    """

    name: str
    score: Callable[..., np.ndarray]
    inputs: tuple[str, ...] = ()
    signed: bool = False
    straight_through: bool = False

    def __call__(self, weight: np.ndarray, **inputs) -> np.ndarray:
        return self.score(weight, **inputs)

    @property
    def needs_calibration(self) -> bool:
        """Whether the scores need data run through the model (gradients or input norms)."""
        return bool({"gradient", "input_norm", "accumulated_score"} & set(self.inputs))


_CRITERIA = types.MappingProxyType(
    {
        "magnitude": Criterion("magnitude", magnitude),
        "taylor": Criterion("taylor", taylor, inputs=("gradient",)),
        "movement": Criterion(
            "movement", movement, inputs=("accumulated_score",), signed=True, straight_through=True
        ),
        "wanda": Criterion("wanda", wanda, inputs=("input_norm",)),
    }
)

NAMES = tuple(_CRITERIA)


def get(name: str) -> Criterion:
    """The criterion registered under `name`; `ValueError` names the choices otherwise.

    Example:

    ```python
    get("magnitude")(np.array([-2.0]))  # array([2.])
    get("taylor").inputs  # ('gradient',)
    ```
    """
    if name not in _CRITERIA:
        raise ValueError(
            f"Argument `criterion` must be one of {sorted(_CRITERIA)}. Received: criterion={name!r}"
        )
    return _CRITERIA[name]
