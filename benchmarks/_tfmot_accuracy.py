"""The tf-keras half of the accuracy benchmark: tfmot's PolynomialDecay, as JSON on stdout.

Run by accuracy_vs_sparsity.py in its own process with TF_USE_LEGACY_KERAS=1 (tfmot needs tf-keras).
Starts from the dense weights the Keras 3 runs start from and follows the same recipe: gradual
pruning at the dense learning rate, then fine-tuning at fixed masks with a cosine-decayed rate.

    python _tfmot_accuracy.py TASK WEIGHTS.npz SPARSITIES_JSON PRUNING_EPOCHS FINETUNE_EPOCHS SEED
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from _accuracy_tasks import (  # noqa: E402
    BATCH_SIZE,
    LEARNING_RATE,
    accuracy,
    build,
    compile_model,
    data,
    kernel_sparsity,
    pruning_frequency,
    schedule_end_step,
    steps_per_epoch,
)


def run(task, weights, sparsity, pruning_epochs, finetune_epochs, seed):
    (x, y), (x_test, y_test) = data(task)
    keras.utils.set_random_seed(seed)
    model = build(keras, task)
    model.set_weights(weights)
    pruning_steps = pruning_epochs * steps_per_epoch(x)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0,
        sparsity,
        begin_step=0,
        end_step=schedule_end_step(pruning_steps),
        frequency=pruning_frequency(pruning_steps),
    )
    pruned = compile_model(keras, tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule))
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    pruned.fit(x, y, epochs=pruning_epochs, batch_size=BATCH_SIZE, verbose=0, callbacks=callbacks)
    decay = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, finetune_epochs * steps_per_epoch(x))
    compile_model(keras, pruned, decay)
    pruned.fit(x, y, epochs=finetune_epochs, batch_size=BATCH_SIZE, verbose=0, callbacks=callbacks)
    final = tfmot.sparsity.keras.strip_pruning(pruned)
    return accuracy(final, x_test, y_test), kernel_sparsity([layer.get_weights() for layer in final.layers])


def main():
    task, weights_path, sparsities, pruning_epochs, finetune_epochs, seed = sys.argv[1:]
    stored = np.load(weights_path)
    weights = [stored[f"w{i}"] for i in range(len(stored.files))]
    results = {}
    for sparsity in json.loads(sparsities):
        results[str(sparsity)] = run(
            task, weights, sparsity, int(pruning_epochs), int(finetune_epochs), int(seed)
        )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
