"""Prunes a tiny model under tf.distribute.MirroredStrategy on two logical CPUs; prints JSON facts.

Run in its own process: logical devices must be configured before TensorFlow starts.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfsparse  # noqa: E402
from tfsparse.mask_updates import collect_wrappers  # noqa: E402


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = x[:, :4].argmax(axis=1).astype("int32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
        )
        pruned = tfsparse.prune_low_magnitude(
            model, pruning_schedule=tfsparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=3)
        )
        pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    facts = {"replicas": strategy.num_replicas_in_sync, "layers": []}
    for wrapper in collect_wrappers(pruned):
        per_replica_masks = [v.numpy() for v in wrapper.masks[0].value.values]
        per_replica_kernels = [v.numpy() for v in wrapper.pruned_weights[0].value.values]
        facts["layers"].append(
            {
                "step": wrapper.get_pruning_step(),
                "sparsity": [float((m == 0).mean()) for m in per_replica_masks],
                "masks_identical": all(np.array_equal(per_replica_masks[0], m) for m in per_replica_masks),
                "kernels_identical": all(
                    np.array_equal(per_replica_kernels[0], k) for k in per_replica_kernels
                ),
                "kernel_zeros_follow_mask": bool(
                    (per_replica_kernels[0][per_replica_masks[0] == 0] == 0).all()
                ),
            }
        )
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
