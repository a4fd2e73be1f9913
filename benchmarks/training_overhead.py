"""Training-step overhead of pruning: dense vs tfsparse on every Keras backend, and vs tfmot (tf-keras).

For an MLP, a small CNN and one transformer block, prints the median seconds per training step of
the dense model and of the pruned one (PolynomialDecay 0.5 -> 0.9, masks updated every 100 steps, as
tfmot's default) and the ratio pruned / dense, on TensorFlow with and without `jit_compile`, on JAX
and on PyTorch (rows for backends that are not installed are left out). Each backend runs in its own
process (the backend is fixed when Keras is imported); runs are warmed up, then alternated
`--repeats` times and the medians taken. On the TensorFlow rows, tfmot on tf-keras (in its own
process with TF_USE_LEGACY_KERAS=1) is timed alongside; it cannot prune the transformer block.

    python benchmarks/training_overhead.py [--repeats 7] [--models mlp cnn transformer]
        [--backends tensorflow tensorflow-jit jax torch] [--no-tfmot] [--steps 100]

Targets: tfsparse within 1.10x of dense on every CPU row (1.05x on a GPU with JAX and PyTorch), and
below tfmot's ratio.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

MODELS = ["mlp", "cnn", "transformer"]
BACKENDS = {  # row label: (KERAS_BACKEND, jit_compile)
    "tensorflow": ("tensorflow", False),
    "tensorflow-jit": ("tensorflow", True),
    "jax": ("jax", "auto"),
    "torch": ("torch", "auto"),
}


def measure_tfsparse(name, repeats, jit_compile, steps):
    """Median seconds per step of the dense and the pruned model, in this process's backend."""
    import keras
    from _overhead_models import build, compile_model, data, time_alternating

    import tfsparse

    keras.utils.set_random_seed(0)
    x, y = data(name, steps)
    dense = compile_model(keras, build(keras, name), jit_compile)
    schedule = tfsparse.PolynomialDecay(0.5, 0.9, begin_step=0, end_step=10_000, frequency=100)
    pruned = compile_model(
        keras, tfsparse.prune_low_magnitude(build(keras, name), pruning_schedule=schedule), jit_compile
    )
    return time_alternating(
        {"dense": (dense, []), "pruned": (pruned, [tfsparse.UpdatePruningStep()])}, x, y, repeats
    )


def _run(script_args, env):
    done = subprocess.run([sys.executable, *script_args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(script_args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_in_backend(label, name, repeats, steps):
    backend, jit_compile = BACKENDS[label]
    env = dict(os.environ, KERAS_BACKEND=backend)
    args = [__file__, "--worker", label, "--models", name, "--repeats", str(repeats), "--steps", str(steps)]
    return _run(args, env)


def measure_tfmot(name, repeats, jit_compile, steps):
    script = os.path.join(os.path.dirname(__file__), "_tfmot_overhead.py")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", KERAS_BACKEND="tensorflow")
    return _run([script, name, str(repeats), "jit" if jit_compile else "no-jit", str(steps)], env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100, help="training steps per timed fit()")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--no-tfmot", action="store_true", help="skip the tf-keras/tfmot columns")
    parser.add_argument("--worker", choices=list(BACKENDS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (name,) = args.models
        json.dump(measure_tfsparse(name, args.repeats, BACKENDS[args.worker][1], args.steps), sys.stdout)
        print()
        return

    backends = [b for b in args.backends if importlib.util.find_spec(BACKENDS[b][0]) is not None]
    print(f"batch 64, median seconds per step over {args.repeats} alternated runs of {args.steps} steps")
    print(f"{'model':<12} {'backend':<15} {'dense ms':>9} {'tfsparse ms':>12} {'ratio':>6}", end="")
    print("" if args.no_tfmot else f" {'tf-keras ms':>12} {'tfmot ms':>9} {'ratio':>6}")
    for name in args.models:
        for label in backends:
            ours = measure_in_backend(label, name, args.repeats, args.steps)
            line = f"{name:<12} {label:<15} {ours['dense'] * 1e3:>9.2f} {ours['pruned'] * 1e3:>12.2f}"
            line += f" {ours['pruned'] / ours['dense']:>5.2f}x"
            if not args.no_tfmot and BACKENDS[label][0] == "tensorflow" and name != "transformer":
                theirs = measure_tfmot(name, args.repeats, BACKENDS[label][1], args.steps)
                line += f" {theirs['dense'] * 1e3:>12.2f} {theirs['pruned'] * 1e3:>9.2f}"
                line += f" {theirs['pruned'] / theirs['dense']:>5.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
