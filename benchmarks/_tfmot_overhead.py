"""The tf-keras half of the overhead benchmark: dense vs tfmot-pruned step time, as JSON on stdout.

Run by training_overhead.py in its own process with TF_USE_LEGACY_KERAS=1 (tfmot needs tf-keras).
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from _overhead_models import build, compile_model, data, time_alternating  # noqa: E402


def main():
    name, repeats, jit_compile = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "jit"
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    tf.random.set_seed(0)
    x, y = data(name, steps)
    dense = compile_model(keras, build(keras, name), jit_compile)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.5, 0.9, begin_step=0, end_step=10_000, frequency=100)
    pruned = compile_model(
        keras,
        tfmot.sparsity.keras.prune_low_magnitude(build(keras, name), pruning_schedule=schedule),
        jit_compile,
    )
    times = time_alternating(
        {"dense": (dense, []), "pruned": (pruned, [tfmot.sparsity.keras.UpdatePruningStep()])}, x, y, repeats
    )
    json.dump(times, sys.stdout)


if __name__ == "__main__":
    main()
