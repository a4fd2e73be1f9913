"""`Distiller`: training a (pruned) student to match a dense teacher as well as the labels.

Knowledge distillation (Hinton et al., 2015) recovers accuracy lost to pruning: the teacher's
softened outputs say which wrong classes are nearly right, which the labels alone do not. The
distiller is an ordinary Keras model around the student, so `compile`/`fit`, callbacks (pruning's
`UpdatePruningStep` included: it finds the student's pruned layers) and every backend work as usual.
"""

from __future__ import annotations

import keras
from keras import ops


def distillation_loss(teacher_outputs, student_outputs, temperature: float, from_logits: bool = True):
    """`T**2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch.

    Args:
        teacher_outputs: the teacher's logits (or probabilities if not `from_logits`).
        student_outputs: the student's, same shape.
        temperature: the softening temperature T > 0.
        from_logits: whether the outputs are logits; probabilities are turned into log-probabilities.

    Returns:
        A scalar tensor.

    Example:

    ```python
    distillation_loss(teacher(x), student(x), temperature=4.0)
    ```
    """
    teacher_outputs = ops.cast(teacher_outputs, "float32")
    student_outputs = ops.cast(student_outputs, "float32")
    if not from_logits:
        teacher_outputs = ops.log(ops.clip(teacher_outputs, 1e-7, 1.0))
        student_outputs = ops.log(ops.clip(student_outputs, 1e-7, 1.0))
    teacher_log = ops.log_softmax(teacher_outputs / temperature, axis=-1)
    student_log = ops.log_softmax(student_outputs / temperature, axis=-1)
    divergence = ops.sum(ops.exp(teacher_log) * (teacher_log - student_log), axis=-1)
    return ops.mean(divergence) * temperature**2


@keras.saving.register_keras_serializable(package="tfsparse")
class Distiller(keras.Model):
    """A Keras model that trains `student` on the labels and on `teacher`'s softened outputs.

    `compile(optimizer=..., loss=..., metrics=...)` takes the student's loss against the labels and
    its metrics. Each training step minimizes `alpha * distillation + (1 - alpha) * loss`, the
    distillation term being `T**2 * KL(softmax(teacher / T) || softmax(student / T))`; the
    student's own added losses (pruning regularizers) are added unweighted. The teacher is frozen
    and runs in inference mode. Calling the distiller, `predict` and `evaluate` use the student.

    Args:
        student: the model to train (e.g. from `prune_low_magnitude`); trained in place.
        teacher: the model to learn from (e.g. the dense original), not trained.
        temperature: the softening temperature T > 0.
        alpha: the weight of the distillation term, in [0, 1].
        from_logits: whether both models output logits (True) or probabilities.

    Example:

    ```python
    distiller = tfsparse.Distiller(student=pruned, teacher=model, temperature=4.0, alpha=0.5)
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(x, y, epochs=3, callbacks=[tfsparse.UpdatePruningStep()])
    final = tfsparse.strip_pruning(pruned)
    ```
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        temperature: float = 4.0,
        alpha: float = 0.5,
        from_logits: bool = True,
        **kwargs,
    ):
        for argument, value in (("student", student), ("teacher", teacher)):
            if not isinstance(value, keras.layers.Layer):
                raise ValueError(
                    f"Argument `{argument}` must be a Keras model. Received: {argument}={value!r} "
                    f"of type {type(value).__name__}"
                )
        if student is teacher:
            raise ValueError(
                "Arguments `student` and `teacher` must be different models: the teacher is frozen. "
                f"Received: the same model '{student.name}' twice."
            )
        if not temperature > 0:
            raise ValueError(f"Argument `temperature` must be > 0. Received: temperature={temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Argument `alpha` must be in [0, 1]. Received: alpha={alpha}")
        kwargs.setdefault("name", f"distiller_{student.name}")
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = bool(from_logits)

    # The teacher is frozen by leaving its variables out of the trainable ones, rather than by
    # setting `teacher.trainable = False`, which would change the user's model.
    @property
    def trainable_variables(self):
        return self.student.trainable_variables if self.trainable else []

    @property
    def non_trainable_variables(self):
        trainable = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trainable]

    @property
    def trainable_weights(self):
        return self.student.trainable_weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Keras' own loss: the compiled loss on the labels plus the added losses (regularizers).
        label_and_added = super().compute_loss(x, y, y_pred, sample_weight=sample_weight, training=training)
        added = sum((ops.sum(loss) for loss in self.losses), ops.zeros((), dtype=label_and_added.dtype))
        if y_pred is None:
            y_pred = self(x, training=training)
        teacher_outputs = ops.stop_gradient(self.teacher(x, training=False))
        distilled = distillation_loss(teacher_outputs, y_pred, self.temperature, self.from_logits)
        distilled = ops.cast(distilled, label_and_added.dtype)
        return self.alpha * distilled + (1.0 - self.alpha) * (label_and_added - added) + added

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "temperature": self.temperature,
                "alpha": self.alpha,
                "from_logits": self.from_logits,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        return cls(**config)
