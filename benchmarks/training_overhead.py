"""Training-step overhead of pruning: dense vs tfsparse (Keras 3) vs tfmot (tf-keras), side by side.

For a small CNN and an MLP, prints the median seconds per training step of the dense model and of
the pruned one (PolynomialDecay 0.5 -> 0.9, masks updated every 100 steps, as tfmot's default),
for tfsparse on Keras 3 and for tfmot on tf-keras (in its own process with TF_USE_LEGACY_KERAS=1),
and the ratios pruned / dense. Runs are warmed up, then alternated `--repeats` times.

    python benchmarks/training_overhead.py [--repeats 7] [--models cnn mlp] [--no-tfmot]

Target: tfsparse within 1.10x of dense, and below tfmot's ratio. Works on every Keras backend
(set KERAS_BACKEND); the tfmot columns need TensorFlow.
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
from _overhead_models import build, compile_model, data, time_alternating  # noqa: E402

import tfsparse  # noqa: E402


def measure_tfsparse(name, repeats, jit_compile):
    keras.utils.set_random_seed(0)
    x, y = data(name)
    dense = compile_model(keras, build(keras, name), jit_compile)
    schedule = tfsparse.PolynomialDecay(0.5, 0.9, begin_step=0, end_step=10_000, frequency=100)
    pruned = compile_model(
        keras, tfsparse.prune_low_magnitude(build(keras, name), pruning_schedule=schedule), jit_compile
    )
    return time_alternating(
        {"dense": (dense, []), "pruned": (pruned, [tfsparse.UpdatePruningStep()])}, x, y, repeats
    )


def measure_tfmot(name, repeats, jit_compile):
    script = os.path.join(os.path.dirname(__file__), "_tfmot_overhead.py")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", KERAS_BACKEND="tensorflow")
    done = subprocess.run(
        [sys.executable, script, name, str(repeats), "jit" if jit_compile else "no-jit"],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the tfmot run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--no-tfmot", action="store_true", help="skip the tf-keras/tfmot columns")
    parser.add_argument("--jit-compile", action="store_true", help="compile every model with XLA")
    args = parser.parse_args()

    header = f"{'model':<5} {'dense ms':>9} {'tfsparse ms':>12} {'ratio':>6}"
    if not args.no_tfmot:
        header += f" {'tf-keras ms':>12} {'tfmot ms':>9} {'ratio':>6}"
    print(
        f"backend: {keras.backend.backend()}, jit_compile={args.jit_compile}, batch 64, "
        f"median seconds per step over {args.repeats} alternated runs"
    )
    print(header)
    for name in args.models:
        ours = measure_tfsparse(name, args.repeats, args.jit_compile)
        line = f"{name:<5} {ours['dense'] * 1e3:>9.2f} {ours['pruned'] * 1e3:>12.2f} {ours['pruned'] / ours['dense']:>5.2f}x"
        if not args.no_tfmot:
            theirs = measure_tfmot(name, args.repeats, args.jit_compile)
            line += (
                f" {theirs['dense'] * 1e3:>12.2f} {theirs['pruned'] * 1e3:>9.2f}"
                f" {theirs['pruned'] / theirs['dense']:>5.2f}x"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
