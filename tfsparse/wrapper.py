"""`PruneLowMagnitude`: a Keras wrapper that holds a layer's masks and pruning step.

The wrapped layer runs on `weight * mask` for each pruned weight, so gradients reach only the weights
that are kept. Masks are computed elsewhere (`UpdatePruningStep`, on the host, when the schedule
says so); inside a training step the only extra work is one multiply per pruned weight.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from tfsparse import criteria, registry, regularizers
from tfsparse.masking import BLOCK_POOLING_TYPES
from tfsparse.regrowth import Regrowth
from tfsparse.regrowth import get as get_regrowth
from tfsparse.schedules import ConstantSparsity, PruningSchedule

SCOPES = ("layer", "global")
SCORE_NORMALIZATIONS = (None, "lamp")
# First in every saved wrapper's config, which Keras prints when it cannot find the class.
LOAD_NOTE = "saved by tfsparse: run `import tfsparse` before keras.saving.load_model"


def no_step_driver_message(name: str) -> str:
    """The error for training a pruned layer without `UpdatePruningStep`."""
    return _NO_STEP_DRIVER.format(name=name)


_NO_STEP_DRIVER = (
    "Layer '{name}' is being trained with pruning but no `tfsparse.UpdatePruningStep` callback "
    "drives its pruning step. Pass `callbacks=[tfsparse.UpdatePruningStep()]` to `model.fit()`. "
    "In a custom training loop, create `step_callback = tfsparse.UpdatePruningStep()`, call "
    "`step_callback.set_model(model)` and `step_callback.on_train_begin()` once, then "
    "`step_callback.on_train_batch_begin(batch)` before every training step."
)


def _check_block_size(block_size: Sequence[int]) -> tuple[int, int]:
    try:
        rows, cols = (int(b) for b in block_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"Argument `block_size` must be a pair of positive integers. Received: block_size={block_size}"
        ) from None
    if rows < 1 or cols < 1:
        raise ValueError(
            f"Argument `block_size` must be a pair of positive integers. Received: block_size={block_size}"
        )
    return rows, cols


def _check_m_by_n(sparsity_m_by_n: Sequence[int] | None) -> tuple[int, int] | None:
    if sparsity_m_by_n is None:
        return None
    try:
        m, n = (int(v) for v in sparsity_m_by_n)
    except (TypeError, ValueError):
        m, n = 0, 0
    if not 0 < m < n:
        raise ValueError(
            "Argument `sparsity_m_by_n` must be a pair (m, n) of integers with 0 < m < n, e.g. (2, 4). "
            f"Received: sparsity_m_by_n={sparsity_m_by_n}"
        )
    return m, n


def _check_regrowth(value, block_size, sparsity_m_by_n):
    value = get_regrowth(value)
    if value is not None and (block_size != (1, 1) or sparsity_m_by_n is not None):
        raise ValueError(
            "Argument `regrowth` moves single weights and cannot be combined with `block_size` or "
            f"`sparsity_m_by_n`. Received: regrowth={value!r}, block_size={block_size}, "
            f"sparsity_m_by_n={sparsity_m_by_n}"
        )
    return value


def _forward_pass() -> object | None:
    """An object that stays the same for every layer call within one forward pass of a model.

    Keras offers no public handle on "the current forward pass", and a shared layer must advance
    its pruning step once per training step, not once per call. Two private Keras objects serve,
    read here only: the stateless scope that JAX's training step runs the whole model in, else the
    call context that `Layer.__call__` opens at the outermost layer (TensorFlow, PyTorch).
    """
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    return get_stateless_scope() or global_state.get_global_attribute("current_call_ctx")


def accepts_argument(function, argument: str) -> bool:
    parameters = inspect.signature(function).parameters
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@keras.saving.register_keras_serializable(package="tfsparse")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer so that its weights are pruned during training.

    Usually created by `tfsparse.prune_low_magnitude`; the arguments are the same.

    Args:
        layer: the layer to prune: a known Keras layer or a `tfsparse.PrunableLayer`.
        pruning_schedule: a `PruningSchedule`; defaults to `ConstantSparsity(0.5, 0)`.
        block_size: `(rows, cols)` of the blocks pruned together; `(1, 1)` prunes single weights.
        block_pooling_type: how scores are pooled in a block: "AVG" or "MAX".
        sparsity_m_by_n: `(m, n)` keeps the `m` largest of every `n` consecutive weights along the
            input dimension (2:4 for sparse tensor cores); the schedule then only says when.
        criterion: how weights are scored: a name from `tfsparse.criteria`: "magnitude",
            "taylor" (|w * gradient|), "movement" (-sum of gradient * w over the mask updates:
            weights the loss pulls toward zero go first) or "wanda" (|w| * input norm). All but
            "magnitude" need `UpdatePruningStep(calibration_data=...)`.
        scope: "layer" (each layer reaches the sparsity) or "global" (one threshold across all
            layers pruned with scope "global" and the same schedule).
        regularizer: a `tfsparse.regularizers` penalty on the pruned weights, added to the
            model's losses; its strength may follow the pruning step. Dropped by `strip_pruning`.
        score_normalization: None, or "lamp" to normalize scores per layer (LAMP) before the
            global threshold of scope "global"; needs a criterion with non-negative scores.
        min_density: with scope "global", the share of each pruned weight that is always kept,
            in [0, 1]; None (the default) keeps half the group's average density, so that no
            layer is emptied.
        regrowth: None, "rigl", "set" or a `tfsparse.Regrowth`: once the layer has reached its
            target sparsity, each mask update drops its weakest active weights and regrows as
            many (RigL by gradient, needing `UpdatePruningStep(calibration_data=...)`; SET at
            random). Needs single-weight masks (no `block_size` or `sparsity_m_by_n`).

    Example:

    ```python
    layer = tfsparse.PruneLowMagnitude(
        keras.layers.Dense(10), pruning_schedule=tfsparse.ConstantSparsity(0.8, 0))
    ```
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule: PruningSchedule | None = None,
        block_size: Sequence[int] = (1, 1),
        block_pooling_type: str = "AVG",
        sparsity_m_by_n: Sequence[int] | None = None,
        criterion: str = "magnitude",
        scope: str = "layer",
        regularizer: regularizers.Regularizer | None = None,
        score_normalization: str | None = None,
        min_density: float | None = None,
        regrowth: Regrowth | str | None = None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                f"`PruneLowMagnitude` wraps a Keras layer. Received: layer={layer!r} of type {type(layer).__name__}"
            )
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(f"Layer '{layer.name}' is already wrapped for pruning; wrap it once.")
        if not registry.is_prunable(layer):
            raise ValueError(
                f"Layer '{layer.name}' of type {type(layer).__name__} has no weights to prune; "
                "leave it unwrapped (`prune_low_magnitude` on a model does that by itself)."
            )
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, 0)
        if not isinstance(pruning_schedule, PruningSchedule):
            raise ValueError(
                "Argument `pruning_schedule` must be a `tfsparse.PruningSchedule` such as "
                f"`ConstantSparsity` or `PolynomialDecay`. Received: pruning_schedule={pruning_schedule!r}"
            )
        if block_pooling_type not in BLOCK_POOLING_TYPES:
            raise ValueError(
                f"Argument `block_pooling_type` must be one of {BLOCK_POOLING_TYPES}. "
                f"Received: block_pooling_type={block_pooling_type!r}"
            )
        block_size = _check_block_size(block_size)
        sparsity_m_by_n = _check_m_by_n(sparsity_m_by_n)
        if sparsity_m_by_n is not None and block_size != (1, 1):
            raise ValueError(
                "Arguments `sparsity_m_by_n` and `block_size` cannot be combined: pick one pattern. "
                f"Received: sparsity_m_by_n={sparsity_m_by_n}, block_size={block_size}"
            )
        scorer = criteria.get(criterion)
        if scope not in SCOPES:
            raise ValueError(f"Argument `scope` must be one of {SCOPES}. Received: scope={scope!r}")
        regularizer = regularizers.check(regularizer)
        if score_normalization not in SCORE_NORMALIZATIONS:
            raise ValueError(
                f"Argument `score_normalization` must be one of {SCORE_NORMALIZATIONS}. "
                f"Received: score_normalization={score_normalization!r}"
            )
        if score_normalization == "lamp" and scorer.signed:
            raise ValueError(
                "Argument `score_normalization='lamp'` needs non-negative scores, and criterion "
                f"{criterion!r} gives signed ones. Use criterion 'magnitude', 'taylor' or 'wanda', "
                "or score_normalization=None."
            )
        if min_density is not None and not 0.0 <= min_density <= 1.0:
            raise ValueError(f"Argument `min_density` must be in [0, 1]. Received: min_density={min_density}")
        regrowth = _check_regrowth(regrowth, block_size, sparsity_m_by_n)
        if regrowth is not None and scorer.straight_through:
            raise ValueError(
                f"Criterion {criterion!r} already brings back pruned weights whose score rises; it "
                f"cannot be combined with `regrowth`. Received: regrowth={regrowth!r}"
            )
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.block_size = block_size
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = sparsity_m_by_n
        self.criterion = criterion
        self.scope = scope
        self.regularizer = regularizer
        self.score_normalization = score_normalization
        self.min_density = None if min_density is None else float(min_density)
        self.regrowth = regrowth
        self._input_observer = None
        self.supports_masking = layer.supports_masking
        self._inner_accepts_training = accepts_argument(layer.call, "training")
        self._inner_accepts_mask = accepts_argument(layer.call, "mask")
        self._step_driven = False
        self._refused_training = False
        self._counted_pass = None

    def build(self, input_shape=None):
        super().build(input_shape)
        self.pruned_weights = registry.prunable_weights(self.layer)
        self.masks = self._companions("mask", "ones", self.pruned_weights)
        # Movement sums -gradient * weight over mask updates, pruned weights included (straight-
        # through): the sum and the pruned weights' values are state, saved with the model.
        accumulates = "accumulated_score" in criteria.get(self.criterion).inputs
        self.movement_scores = self._companions(
            "movement_score", "zeros", self.pruned_weights if accumulates else ()
        )
        self.dense_weights = self._companions("dense", "zeros", self.pruned_weights if accumulates else ())
        for dense, weight in zip(self.dense_weights, self.pruned_weights):
            dense.assign(ops.copy(weight.value))
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            dtype="int32",  # int64 is not available on JAX by default; 2**31 steps is plenty
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.built = True

    def _companions(self, suffix: str, initializer: str, weights) -> list:
        """A non-trainable variable shaped like each of `weights`, saved with the model."""
        return [
            self.add_weight(
                name=f"{weight.name}_{suffix}",
                shape=weight.shape,
                dtype=weight.dtype,
                initializer=initializer,
                trainable=False,
                aggregation="only_first_replica",
            )
            for weight in weights
        ]

    # -- training --------------------------------------------------------------------------------

    def call(self, inputs, *args, training=None, mask=None, **kwargs):
        if training:
            if not self._step_driven:
                # The step being traced now is unusable; the driver retraces when it attaches.
                self._refused_training = True
                raise ValueError(no_step_driver_message(self.name))
            self._advance_step()
        if self._input_observer is not None:
            self._input_observer(inputs)
        if self._inner_accepts_training:
            kwargs["training"] = training
        if mask is not None and self._inner_accepts_mask:
            kwargs["mask"] = mask
        masked = {id(weight): weight.value * mask_variable.value for weight, mask_variable in self._pairs()}
        if self.regularizer is not None:
            step = self.pruning_step.value
            self.add_loss(sum(self.regularizer(value, step) for value in masked.values()))
        trainable = [masked.get(id(v), v.value) for v in self.layer.trainable_variables]
        non_trainable = [masked.get(id(v), v.value) for v in self.layer.non_trainable_variables]
        outputs, updated = self.layer.stateless_call(trainable, non_trainable, inputs, *args, **kwargs)
        # Carry back state the layer changed (RNG seeds of dropout, for instance).
        for variable, value in zip(self.layer.non_trainable_variables, updated):
            if id(variable) not in masked:
                variable.assign(value)
        return outputs

    def _advance_step(self) -> None:
        # Count training steps, not calls: a layer shared by several inputs is called several times
        # in one forward pass (and in one trace of a compiled step) but advances once.
        forward_pass = _forward_pass()
        if (
            forward_pass is not None
            and self._counted_pass is not None
            and self._counted_pass() is forward_pass
        ):
            return
        self.pruning_step.assign(self.pruning_step + 1)
        # A weak reference: a later pass could otherwise reuse a freed pass's id().
        self._counted_pass = weakref.ref(forward_pass) if forward_pass is not None else None

    def compute_output_spec(self, *args, training=None, mask=None, **kwargs):
        if self._inner_accepts_training and training is not None:
            kwargs["training"] = training
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    # -- what the step driver and strip_pruning use ----------------------------------------------

    def _pairs(self):
        return zip(self.pruned_weights, self.masks)

    def set_step_driven(self, driven: bool) -> bool:
        """Marks whether an `UpdatePruningStep` drives this layer (training is refused otherwise).

        Returns whether training was refused since the last call, i.e. whether a compiled training
        step that includes this layer was traced without a driver and must be traced again.
        """
        self._step_driven = driven
        refused, self._refused_training = self._refused_training, False
        return refused

    @property
    def step_driven(self) -> bool:
        """Whether an `UpdatePruningStep` currently drives this layer's step and masks."""
        return self._step_driven

    def get_pruning_step(self) -> int:
        """The number of training steps this layer has taken while being pruned."""
        return int(ops.convert_to_numpy(self.pruning_step.value))

    def get_masks(self) -> list[np.ndarray]:
        """The current masks, one per pruned weight, as numpy arrays of 0.0 and 1.0."""
        return [ops.convert_to_numpy(m.value) for m in self.masks]

    def get_pruned_weight_values(self) -> list[np.ndarray]:
        """The pruned weights as they are stored (not yet multiplied by the masks)."""
        return [ops.convert_to_numpy(w.value) for w in self.pruned_weights]

    def set_masks(self, masks: Sequence) -> None:
        """Sets the masks (numpy arrays or tensors) and zeroes the masked weights, so that stored
        weights carry the mask."""
        dense_weights = self.dense_weights or [None] * len(self.pruned_weights)
        for weight, mask_variable, mask, dense in zip(self.pruned_weights, self.masks, masks, dense_weights):
            if dense is not None:
                # Straight-through criteria keep each pruned weight's value from when it was pruned,
                # and a weight that comes back starts from it.
                kept = ops.greater(mask_variable.value, 0)
                dense.assign(ops.where(kept, weight.value, dense.value))
                weight.assign(dense.value)
            # A tensor computed on the device stays there (`ops.cast` of numpy copies it over).
            mask_variable.assign(ops.cast(mask, mask_variable.dtype))
            # Multiplied where the weight lives: no round trip of the weight through the host.
            weight.assign(ops.multiply(weight.value, ops.cast(mask_variable.value, weight.dtype)))

    def get_movement_scores(self) -> list[np.ndarray]:
        """Criterion "movement"'s score per pruned weight: `-sum g * w` over the mask updates so far."""
        return [ops.convert_to_numpy(score.value) for score in self.movement_scores]

    def accumulate_movement(self, gradients: Sequence) -> None:
        """Adds `-gradient * weight` to each pruned weight's movement score, pruned weights at the
        value they had when pruned (straight-through).

        Args:
            gradients: per pruned weight, the signed loss gradient with respect to the masked
                weight, summed over this update's calibration batches.
        """
        for score, dense, gradient in zip(self.movement_scores, self.dense_weights, gradients):
            score.assign(criteria.movement_step(score.value, dense.value, ops.cast(gradient, score.dtype)))

    def set_input_observer(self, observer) -> None:
        """Calls `observer(inputs)` on every eager call of the layer, or stops with None.

        Calibration (Wanda input norms) uses it to see each pruned layer's inputs, also inside
        nested models and for shared layers; it is not meant for traced (compiled) calls.
        """
        self._input_observer = observer

    def masked_weights(self) -> list[np.ndarray]:
        """The inner layer's weights (as `layer.get_weights()` orders them) with masks applied."""
        masks = {id(w): m for w, m in zip(self.pruned_weights, self.get_masks())}
        return [
            ops.convert_to_numpy(v.value) * masks[id(v)] if id(v) in masks else ops.convert_to_numpy(v.value)
            for v in self.layer.weights
        ]

    # -- serialization ---------------------------------------------------------------------------

    def get_config(self) -> dict:
        # Keras imports only its own packages' classes when loading, so a model saved with this
        # layer loads only after `import tfsparse`; the note is first in the config that Keras
        # prints when the class is missing, to say so.
        config = {"note": LOAD_NOTE, **super().get_config()}
        config.update(
            {
                "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
                "block_size": list(self.block_size),
                "block_pooling_type": self.block_pooling_type,
                "sparsity_m_by_n": list(self.sparsity_m_by_n) if self.sparsity_m_by_n else None,
                "criterion": self.criterion,
                "scope": self.scope,
                "regularizer": keras.saving.serialize_keras_object(self.regularizer),
                "score_normalization": self.score_normalization,
                "min_density": self.min_density,
                "regrowth": keras.saving.serialize_keras_object(self.regrowth),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        config.pop("note", None)
        # The inner layer's serialized form carries its build shapes, so it comes back built,
        # also for layers called on several inputs (MultiHeadAttention).
        config["layer"] = keras.saving.deserialize_keras_object(
            config["layer"], custom_objects=custom_objects
        )
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"], custom_objects=custom_objects
        )
        if config.get("regularizer") is not None:
            config["regularizer"] = keras.saving.deserialize_keras_object(
                config["regularizer"], custom_objects=custom_objects
            )
        if config.get("regrowth") is not None:
            config["regrowth"] = keras.saving.deserialize_keras_object(
                config["regrowth"], custom_objects=custom_objects
            )
        layer = config.pop("layer")
        return cls(layer, **config)
