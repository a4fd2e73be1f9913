"""Gradients of a model's loss with respect to chosen variables, on each Keras backend.

The only backend-specific code of the pruning core: TensorFlow records with `tf.GradientTape`, JAX
differentiates `stateless_call` with `jax.grad`, PyTorch uses autograd. Everything runs in
inference mode (`training=False`), so pruning steps and batch statistics do not move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
from keras import ops


def _mean_loss(loss_fn, y, y_pred):
    return ops.mean(loss_fn(y, y_pred))


def _tensorflow(model, variables, x, y, loss_fn):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        for variable in variables:
            tape.watch(variable.value)
        loss = _mean_loss(loss_fn, y, model(x, training=False))
    return tape.gradient(loss, [variable.value for variable in variables])


def _jax(model, variables, x, y, loss_fn):
    import jax

    trainable = list(model.trainable_variables)
    positions = {id(v): i for i, v in enumerate(trainable)}
    non_trainable_values = [v.value for v in model.non_trainable_variables]

    def loss_of(trainable_values):
        y_pred, _ = model.stateless_call(trainable_values, non_trainable_values, x, training=False)
        return _mean_loss(loss_fn, y, y_pred)

    gradients = jax.grad(loss_of)([v.value for v in trainable])
    return [gradients[positions[id(v)]] if id(v) in positions else None for v in variables]


def _torch(model, variables, x, y, loss_fn):
    import torch

    values = [variable.value for variable in variables]
    differentiable = [i for i, value in enumerate(values) if value.requires_grad]
    with torch.enable_grad():
        loss = _mean_loss(loss_fn, y, model(x, training=False))
        found = torch.autograd.grad(loss, [values[i] for i in differentiable], allow_unused=True)
    gradients = [None] * len(values)
    for i, gradient in zip(differentiable, found):
        gradients[i] = gradient
    return gradients


_BACKENDS = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}


def gradient_sums(
    model: keras.Model,
    variables: Sequence[keras.Variable],
    batches: Iterable[tuple],
    loss_fn: Callable,
    absolute: bool = False,
) -> list[np.ndarray]:
    """`sum_b dL_b / dv` (or `sum_b |dL_b / dv|` with `absolute=True`) over `batches` for each of
    `variables`, as numpy arrays.

    Args:
        model: the model whose loss is differentiated.
        variables: variables of `model` (a variable the loss does not reach gets zeros).
        batches: `(x, y)` pairs.
        loss_fn: `loss_fn(y_true, y_pred)`, per sample or already averaged.
        absolute: sum the gradients' magnitudes ("taylor") rather than the signed gradients
            ("movement").

    Returns:
        One array per variable, of its shape.

    Example:

    ```python
    gradient_sums(model, [model.layers[-1].kernel], [(x[:32], y[:32])], loss_fn, absolute=True)
    ```
    """
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise ValueError(
            f"Gradient-based criteria support the backends {sorted(_BACKENDS)}. Received: backend={backend!r}"
        )
    compute = _BACKENDS[backend]
    totals = [np.zeros(tuple(v.shape), dtype=np.float64) for v in variables]
    for x, y in batches:
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        y = keras.tree.map_structure(ops.convert_to_tensor, y)
        for total, gradient in zip(totals, compute(model, list(variables), x, y, loss_fn)):
            if gradient is not None:
                gradient = ops.convert_to_numpy(gradient).astype(np.float64)
                total += np.abs(gradient) if absolute else gradient
    return [total.astype(np.float32) for total in totals]
