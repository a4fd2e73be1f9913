"""TFLite size and latency of a pruned CNN: dense vs tfsparse-sparse vs tfmot-sparse, float32 and int8.

A small CNN is trained on scikit-learn's 8x8 digits (shipped with the package), then pruned to the
same sparsity with the same schedule from the same trained weights by tfsparse (Keras 3) and by
tfmot (tf-keras, in its own process with TF_USE_LEGACY_KERAS=1: tfmot refuses Keras 3 models).
tfsparse's files come from `tfsparse.export.to_tflite`; tfmot's from the TFLite converter with
`Optimize.EXPERIMENTAL_SPARSITY` (plus `Optimize.DEFAULT` and a representative dataset for int8),
as tfmot's guides do. Every file is run in LiteRT with its default delegates (XNNPack); a file that
fails to prepare there is timed on LiteRT's builtin kernels and marked so.

    python benchmarks/tflite_size.py [--sparsity 0.9] [--epochs 4] [--runs 300]

Targets: tfsparse's sparse file no larger than tfmot's, and tfsparse's int8 sparse file runs under
the default delegates where tfmot's fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--tfmot-worker" in sys.argv:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf-keras

import numpy as np  # noqa: E402

BATCH_SIZE = 32
SEED = 0


def build(keras):
    """The CNN, in Keras 3 or tf-keras (same layers, same weight order)."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def compile_model(keras, model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def pruning_steps(epochs):
    """(end_step, frequency): sparsity ramps up over all but the last pruning epoch."""
    steps_per_epoch = -(-1400 // BATCH_SIZE)
    return max(steps_per_epoch * (epochs - 1), 1), 10


# -- the tf-keras / tfmot half, in its own process ---------------------------------------------------


def tfmot_worker(folder, sparsity, epochs):
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf.random.set_seed(SEED)
    (x_train, y_train), _ = digits()
    saved = np.load(os.path.join(folder, "dense_weights.npz"))
    model = build(tf_keras)
    model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    end_step, frequency = pruning_steps(epochs)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, 0, end_step, frequency=frequency)
    pruned = compile_model(
        tf_keras, tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    )
    pruned.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    np.savez(os.path.join(folder, "tfmot_weights.npz"), *stripped.get_weights())

    def convert(int8):
        converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        if int8:
            converter.optimizations.append(tf.lite.Optimize.DEFAULT)
            converter.representative_dataset = lambda: ([x_train[i : i + 1]] for i in range(200))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter.convert()

    for name, int8 in (("tfmot_sparse", False), ("tfmot_int8_sparse", True)):
        with open(os.path.join(folder, f"{name}.tflite"), "wb") as file:
            file.write(convert(int8))
    json.dump({"done": True}, sys.stdout)


def run_tfmot(folder, sparsity, epochs):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", KERAS_BACKEND="tensorflow")
    command = [sys.executable, __file__, "--tfmot-worker", folder, "--sparsity", str(sparsity)]
    command += ["--epochs", str(epochs)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the tfmot run failed:\n{done.stderr[-3000:]}")


# -- the Keras 3 / tfsparse half, and the table -------------------------------------------------------


def kernel_sparsity(model):
    kernels = [w for w in model.get_weights() if w.ndim > 1]
    return sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)


def tflite_accuracy(flatbuffer, x, y):
    """Top-1 accuracy of the file, with the default delegates (builtin kernels if they fail)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
    except RuntimeError:
        interpreter = Interpreter(
            model_content=flatbuffer,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    correct = 0
    for sample, label in zip(x, y):
        interpreter.set_tensor(source["index"], sample[None])
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(target["index"])) == label)
    return correct / len(y)


def delegation(report):
    if not report.runs_with_default_delegates:
        return "FAILS to prepare*"
    if report.fully_delegated:
        return "yes, all nodes"
    return "partly: not " + ",".join(sorted(set(report.undelegated_ops)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of dense training and of pruning")
    parser.add_argument("--runs", type=int, default=300, help="invocations timed per file")
    parser.add_argument("--tfmot-worker", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tfmot_worker:
        tfmot_worker(args.tfmot_worker, args.sparsity, args.epochs)
        return

    import warnings

    import keras

    import tfsparse
    from tfsparse import export

    keras.utils.set_random_seed(SEED)
    (x_train, y_train), (x_test, y_test) = digits()
    dense = compile_model(keras, build(keras))
    dense.fit(x_train, y_train, epochs=args.epochs, batch_size=BATCH_SIZE, verbose=0)

    with tempfile.TemporaryDirectory() as folder:
        np.savez(os.path.join(folder, "dense_weights.npz"), *dense.get_weights())
        end_step, frequency = pruning_steps(args.epochs)
        schedule = tfsparse.PolynomialDecay(0.0, args.sparsity, 0, end_step, frequency=frequency)
        pruned = compile_model(keras, tfsparse.prune_low_magnitude(dense, pruning_schedule=schedule))
        pruned.fit(
            x_train,
            y_train,
            epochs=args.epochs,
            batch_size=BATCH_SIZE,
            verbose=0,
            callbacks=[tfsparse.UpdatePruningStep()],
        )
        ours = tfsparse.strip_pruning(pruned)

        run_tfmot(folder, args.sparsity, args.epochs)
        saved = np.load(os.path.join(folder, "tfmot_weights.npz"))
        theirs = build(keras)  # the same architecture in Keras 3, holding tfmot's pruned weights
        theirs.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
        tfmot_files = {}
        for name in ("tfmot_sparse", "tfmot_int8_sparse"):
            with open(os.path.join(folder, f"{name}.tflite"), "rb") as file:
                tfmot_files[name] = file.read()

    calibration = x_train[:200]
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = [
            ("dense", "float32", dense, export.to_tflite(dense, sparse=False)),
            ("tfsparse sparse", "float32", ours, export.to_tflite(ours, sparse=True)),
            ("tfmot sparse", "float32", theirs, tfmot_files["tfmot_sparse"]),
            (
                "dense",
                "int8",
                dense,
                export.to_tflite(dense, sparse=False, quantize="int8", representative_data=calibration),
            ),
            (
                "tfsparse sparse",
                "int8",
                ours,
                export.to_tflite(ours, sparse=True, quantize="int8", representative_data=calibration),
            ),
            ("tfmot sparse", "int8", theirs, tfmot_files["tfmot_int8_sparse"]),
        ]
    notes += [str(w.message) for w in caught if w.category is UserWarning and "to_tflite" in str(w.message)]

    print(
        f"digits CNN (8x8, {sum(w.size for w in dense.get_weights()):,} weights), target sparsity "
        f"{args.sparsity}; {args.epochs} epochs dense + {args.epochs} pruning; latency: median of "
        f"{args.runs} single-sample invocations, LiteRT {_litert_version()}, default threads"
    )
    header = (
        f"{'file':<16} {'weights':<8} {'sparsity':>8} {'accuracy':>8} {'bytes':>9} {'gzip':>8} "
        f"{'latency ms':>10} {'max |diff|':>10}  runs under default delegates"
    )
    print(header)
    print("-" * len(header))
    reports = {}
    for label, weights, model, flatbuffer in rows:
        report = export.verify_tflite(flatbuffer, model, x_test[:64], runs=args.runs)
        reports[label, weights] = report
        print(
            f"{label:<16} {weights:<8} {kernel_sparsity(model):>8.3f} "
            f"{tflite_accuracy(flatbuffer, x_test, y_test):>8.3f} {report.size_bytes:>9,} "
            f"{report.gzip_bytes:>8,} {report.latency_ms:>10.4f} {report.max_abs_difference:>10.2g}  "
            f"{delegation(report)}"
        )
    if any(not r.runs_with_default_delegates for r in reports.values()):
        print("* timed and scored on LiteRT's builtin kernels (default delegates disabled)")
        for (label, weights), report in reports.items():
            if not report.runs_with_default_delegates:
                print(f"  {label} {weights}: {report.delegate_error}")
    for note in notes:
        print(f"note: {note}")

    ours_f, theirs_f = reports["tfsparse sparse", "float32"], reports["tfmot sparse", "float32"]
    ours_q, theirs_q = reports["tfsparse sparse", "int8"], reports["tfmot sparse", "int8"]
    print(
        f"target 1, tfsparse sparse file no larger than tfmot's: "
        f"{'met' if ours_f.size_bytes <= theirs_f.size_bytes else 'MISSED'} "
        f"({ours_f.size_bytes:,} vs {theirs_f.size_bytes:,} bytes)"
    )
    met = ours_q.runs_with_default_delegates and not theirs_q.runs_with_default_delegates
    print(
        f"target 2, tfsparse int8 sparse runs under default delegates where tfmot's fails: "
        f"{'met' if met else 'not shown'} (tfsparse: "
        f"{'runs' if ours_q.runs_with_default_delegates else 'fails'}, tfmot: "
        f"{'runs' if theirs_q.runs_with_default_delegates else 'fails'})"
    )


def _litert_version():
    from importlib.metadata import version

    return version("ai-edge-litert")


if __name__ == "__main__":
    main()
