"""Importance scores of weights: the lower the score, the earlier a weight is pruned."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def magnitude(weight: np.ndarray) -> np.ndarray:
    """Scores each weight by its absolute value.

    Example:

    ```python
    magnitude(np.array([-3.0, 0.5]))  # array([3. , 0.5])
    ```
    """
    return np.abs(weight)


_CRITERIA: dict[str, Callable[[np.ndarray], np.ndarray]] = {"magnitude": magnitude}


def get(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The scoring function registered under `name`; `ValueError` names the choices otherwise.

    Example:

    ```python
    get("magnitude")(np.array([-2.0]))  # array([2.])
    ```
    """
    if name not in _CRITERIA:
        raise ValueError(
            f"Argument `criterion` must be one of {sorted(_CRITERIA)}. Received: criterion={name!r}"
        )
    return _CRITERIA[name]
