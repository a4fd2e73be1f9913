"""`UpdateClusterAssignments`: moves kernel values to their nearest centroid on a schedule during fit()."""

from __future__ import annotations

import keras

from tfsparse.clustering.wrapper import ClusterWeights


def cluster_wrappers(model: keras.Model) -> list[ClusterWeights]:
    """Every `ClusterWeights` layer of `model`, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, ClusterWeights):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += cluster_wrappers(layer)
    return found


class UpdateClusterAssignments(keras.callbacks.Callback):
    """Re-assigns every clustered kernel value to its nearest centroid every `frequency` steps.

    Between updates the centroids train; an update moves each original (frozen) kernel value to
    the centroid now nearest to it. After the last batch of training the assignments are updated
    once more.

    Args:
        frequency: training steps between updates, a positive integer.

    Example:

    ```python
    clustered.fit(x, y, epochs=2, callbacks=[tfsparse.clustering.UpdateClusterAssignments(50)])
    ```
    """

    def __init__(self, frequency: int = 100):
        super().__init__()
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(
                f"Argument `frequency` must be a positive integer. Received: frequency={frequency!r}"
            )
        self.frequency = frequency
        self.steps = 0

    def _update(self) -> None:
        for wrapper in cluster_wrappers(self.model):
            wrapper.update_assignments()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps % self.frequency == 0:
            self._update()

    def on_train_end(self, logs=None):
        self._update()
