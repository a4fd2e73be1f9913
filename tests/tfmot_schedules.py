"""Runs tfmot 0.8.1's schedules on the cases given as JSON on stdin; prints the results as JSON.

tfmot needs tf-keras, so this runs in its own process with TF_USE_LEGACY_KERAS=1.
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402


def main():
    cases = json.load(sys.stdin)
    results = []
    for case in cases:
        schedule_class = getattr(tfmot.sparsity.keras, case["class"])
        try:
            schedule = schedule_class(**case["args"])
        except ValueError:
            results.append({"error": "ValueError"})
            continue
        values = []
        for step in case["steps"]:
            should_prune, sparsity = schedule(tf.constant(step, dtype=tf.int64))
            values.append([bool(should_prune.numpy()), float(sparsity.numpy())])
        results.append({"values": values})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
