"""compression.py's MobileNetV2 rows and tfmot's collaborative-optimization counterparts.

MobileNetV2 (`keras.applications`, weights=None, alpha 0.35, 32x32 input, the entry of
tests/applications.py) learns scikit-learn's digits upscaled to 32x32x3, then goes through the
digits CNN's pipelines: pruned during fit, int8 PTQ, PQAT, clustered + int8, low-rank + int8.
Its batch normalization momentum is set to 0.9 (the application's 0.999 leaves the moving
statistics far from the data after a few hundred steps).

tfmot runs in its own process (`python benchmarks/_compression_more.py --tfmot-worker ...`,
TF_USE_LEGACY_KERAS=1: tfmot refuses Keras 3 models) on the same architecture in tf-keras,
starting from the same trained dense weights, with the same data, schedule, epochs and learning
rates as the tfsparse rows: pruning (PolynomialDecay), post-training int8, PQAT
(`quantize_apply` with `Default8BitPrunePreserveQuantizeScheme`), sparsity-preserving clustering
(`cluster_weights(..., preserve_sparsity=True)`) + int8 and PCQAT
(`Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)`). Its files are converted as
tfmot's guides do (`Optimize.EXPERIMENTAL_SPARSITY`, plus `Optimize.DEFAULT` for int8). A step
tfmot cannot run becomes a row "fails: <error>"; a file LiteRT's default delegates cannot
prepare is scored and timed on the builtin kernels, and the last column says so.
"""

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings

if __name__ == "__main__":  # the tfmot worker: tf.keras must be tf-keras before TensorFlow loads
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _accuracy_tasks import compile_model  # noqa: E402

MODELS = ("digits", "mobilenetv2")
SEED = 0
BATCH_SIZE = 32
UPSCALE = 4  # 8x8 digits -> 32x32, the smallest input MobileNetV2 takes
CALIBRATION = 200  # representative samples for int8


def add_arguments(parser):
    """compression.py's flags for the models, tfmot and a quick run."""
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models' tables to print"
    )
    parser.add_argument(
        "--mobilenetv2-sparsity", type=float, default=0.75, help="MobileNetV2's pruning target"
    )
    parser.add_argument(
        "--mobilenetv2-rank", type=int, default=16, help="rank of MobileNetV2's low-rank 1x1 convolutions"
    )
    parser.add_argument("--no-tfmot", action="store_true", help="skip tfmot's rows (tf-keras subprocess)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 epochs, 1 epoch of QAT and of fine-tuning, 50 timed runs: a smoke run, not the README figures",
    )


def apply_quick(args):
    """Shrinks the epochs and the timed runs when --quick is given."""
    if args.quick:
        args.epochs, args.qat_epochs, args.finetune_epochs, args.runs = 4, 1, 1, 50


# -- data and models, Keras 3 or tf-keras ------------------------------------------------------------


def digits_data():
    from tfsparse.demo import load_data

    return load_data(SEED)


def upscaled_digits():
    """The demo's digits split, each image repeated to 32x32 and to three channels."""
    (x_train, y_train), (x_test, y_test) = digits_data()

    def upscale(images):
        images = images.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)
        return np.repeat(images, 3, axis=-1)

    return (upscale(x_train), y_train), (upscale(x_test), y_test)


def data(model_name):
    return upscaled_digits() if model_name == "mobilenetv2" else digits_data()


def build(keras, model_name):
    """The model in Keras 3 or tf-keras: the same layers in the same order, so weights carry over."""
    if model_name == "digits":
        from tfsparse.demo import build_model

        return build_model(keras)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.applications import FAMILIES

    constructor, side, extra = FAMILIES["mobilenet_v2"]
    model = getattr(keras.applications, constructor)(
        weights=None, input_shape=(side, side, 3), classes=10, classifier_activation=None, **extra
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


def pruning_schedule(sparsity, epochs, samples):
    """The demo's pruning schedule (tfsparse.demo.pruning_schedule) for `samples` training samples."""
    from tfsparse.demo import pruning_schedule

    return pruning_schedule(sparsity, epochs, -(-samples // BATCH_SIZE))


def _quiet_export(model, **options):
    import tfsparse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # which weights XNNPack cannot run sparse: named by the demo
        return tfsparse.export.to_tflite(model, **options)


def export(model, sparse=True, quantize=None, representative_data=None):
    """(file, note): `to_tflite`'s file; where it refuses one (its check against the Keras outputs),
    the converter's file without that check (measured all the same), and the refusal as the note."""
    from tfsparse.export import tflite

    options = {"sparse": sparse, "quantize": quantize, "representative_data": representative_data}
    try:
        return _quiet_export(model, **options), ""
    except RuntimeError as error:
        refusal = "to_tflite refuses it: " + _short(str(error), 400)
    converted = tflite._quantize_aware_for_converter(model, quantize)
    samples = [representative_data] if representative_data is not None else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flatbuffer = tflite._convert(converted, sparse, quantize, samples)
    # As to_tflite does: the sparse weights XNNPack cannot prepare (int8 FULLY_CONNECTED) stored dense.
    return tflite._without_failing_sparse_weights(flatbuffer)[0], refusal


# -- the Keras 3 / tfsparse half --------------------------------------------------------------------


def lowrank_layers(model, rank):
    """The 1x1 convolutions and Dense layers whose rank-`rank` split at least halves their kernel."""
    from tfsparse.lowrank import _kind

    chosen = []
    for layer in model.layers:
        if _kind(layer) is None:
            continue
        kernel = np.asarray(layer.kernel)
        rows, columns = int(np.prod(kernel.shape[:-1])), kernel.shape[-1]
        if 2 * rank * (rows + columns) <= rows * columns:
            chosen.append(layer.name)
    return chosen


def mobilenetv2_rows(args):
    """tfsparse's rows on MobileNetV2, as compression.digits_rows makes them on the digits CNN.

    Returns (rows, float pruned accuracy, test samples, trained dense weights).
    """
    import keras

    import tfsparse
    from tfsparse import clustering, lowrank, quantization

    (x_train, y_train), (x_test, y_test) = upscaled_digits()
    calibration = x_train[:CALIBRATION]
    keras.utils.set_random_seed(SEED)
    dense = compile_model(keras, build(keras, "mobilenetv2"), 3e-3)
    dense.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs, verbose=0)
    schedule = pruning_schedule(args.mobilenetv2_sparsity, args.epochs, len(x_train))
    pruned = compile_model(keras, tfsparse.prune_low_magnitude(dense, pruning_schedule=schedule), 3e-3)
    pruned.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=args.epochs,
        verbose=0,
        callbacks=[tfsparse.UpdatePruningStep()],
    )
    final = tfsparse.strip_pruning(pruned)
    float_accuracy = accuracy(final, x_test, y_test)

    rows = []

    def add(name, make):
        """One row from `make()` -> (exported, Keras accuracy[, name]); a failure becomes the row's error."""
        try:
            exported, keras_accuracy, *renamed = make()
        except Exception as error:  # the table says which pipeline could not run, and why
            rows.append({"name": name, "error": _short(f"{type(error).__name__}: {error}")})
            return
        flatbuffer, note = exported
        name = renamed[0] if renamed else name
        measured = measured_row(name, flatbuffer, x_test, y_test, args.runs, keras_accuracy)
        measured["note"] = note
        rows.append(measured)

    add("dense, float32", lambda: (export(dense, sparse=False), accuracy(dense, x_test, y_test)))
    add("pruned, float32 sparse", lambda: (export(final), float_accuracy))
    add(
        "pruned + int8 PTQ",
        lambda: (export(final, quantize="int8", representative_data=calibration), float_accuracy),
    )

    def pqat():
        keras.utils.set_random_seed(SEED)
        qat = compile_model(keras, quantization.quantize_aware(final), args.qat_learning_rate)
        qat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.qat_epochs, verbose=0)
        return export(qat, quantize="int8", representative_data=calibration), accuracy(qat, x_test, y_test)

    add("pruned + PQAT int8", pqat)

    clusters = args.clusters[0]

    def cluster():
        import compression

        clustered = compression._cluster(keras, final, x_train, y_train, clusters, args)
        clustered = clustering.strip_clustering(clustered)
        exported = export(clustered, quantize="int8", representative_data=calibration)
        return exported, accuracy(clustered, x_test, y_test)

    add(f"pruned + clustered ({clusters}) + int8", cluster)

    def low_rank():
        keras.utils.set_random_seed(SEED)
        layers = lowrank_layers(dense, args.mobilenetv2_rank)
        factorization = lowrank.factorize(dense, rank=args.mobilenetv2_rank, layers=layers)
        factorized = compile_model(keras, factorization.model, 1e-3)
        factorized.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.finetune_epochs, verbose=0)
        before = sum(split.parameters_before for split in factorization.layers)
        after = sum(split.parameters_after for split in factorization.layers)
        exported = export(factorized, sparse=False, quantize="int8", representative_data=calibration)
        name = f"low-rank ({len(layers)} 1x1 convs: rank {args.mobilenetv2_rank}, {after:,} of {before:,} params) + int8"
        return exported, accuracy(factorized, x_test, y_test), name

    add("low-rank + int8", low_rank)
    return rows, float_accuracy, len(y_test), dense.get_weights()


def digits_dense_weights(args):
    """The digits CNN trained dense as compression.digits_rows trains it (same seed and recipe)."""
    import keras

    from tfsparse import demo

    keras.utils.set_random_seed(SEED)
    (x_train, y_train), _ = demo.load_data(SEED)
    dense = compile_model(keras, demo.build_model(), 3e-3)
    dense.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs, verbose=0)
    return dense.get_weights()


def delegation(flatbuffer):
    """Whether LiteRT's default delegates (XNNPack) run the file: all nodes, some, or not at all."""
    from tfsparse.export import _litert

    try:
        builtin = _litert.open_interpreter(flatbuffer, default_delegates=False)
        delegated = _litert.open_interpreter(flatbuffer)
    except RuntimeError as error:
        return "fails: " + _short(str(error).split(";")[0])
    left = _litert.undelegated_nodes(delegated, len(_litert.node_details(builtin)))
    if not left:
        return "yes, all nodes"
    counts = {}
    for node in left:
        counts[node["op_name"]] = counts.get(node["op_name"], 0) + 1
    return "partly: not " + ", ".join(f"{count} {op}" for op, count in sorted(counts.items()))


def measured_row(name, flatbuffer, x_test, y_test, runs, keras_accuracy):
    """compression._row, plus the delegates column; a file XNNPack cannot prepare runs on builtin kernels."""
    import compression
    from tflite_size import tflite_accuracy  # falls back to the builtin kernels

    from tfsparse import analysis

    delegates = delegation(flatbuffer)
    if not delegates.startswith("fails"):
        row = compression._row(name, flatbuffer, x_test, y_test, runs, keras_accuracy)
    else:
        row = {
            "name": name,
            "keras": keras_accuracy,
            "accuracy": tflite_accuracy(flatbuffer, x_test, y_test),
            "sparsity": analysis.tflite_sparsity_report(flatbuffer).totals.sparsity,
            "bytes": len(flatbuffer),
            "gzip": len(gzip.compress(flatbuffer, 9, mtime=0)),
            "latency": compression._latency_ms(flatbuffer, x_test, True, runs),
        }
    row["delegates"] = delegates
    return row


def _short(message, limit=90):
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


# -- the tf-keras / tfmot half, in its own process ---------------------------------------------------


def tfmot_worker(folder):
    """Runs tfmot's pipelines from the dense weights in `folder`; writes their files and rows.json."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    with open(os.path.join(folder, "config.json")) as file:
        config = json.load(file)
    model_name = config["model"]
    (x_train, y_train), (x_test, y_test) = data(model_name)
    calibration = x_train[:CALIBRATION]
    keras.utils.set_random_seed(SEED)
    model = build(keras, model_name)
    saved = np.load(os.path.join(folder, "dense_weights.npz"))
    weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    shapes = [w.shape for w in model.get_weights()]
    if shapes != [w.shape for w in weights]:
        raise RuntimeError(f"tf-keras {model_name} does not match the Keras 3 weights")
    model.set_weights(weights)
    rows = []

    def convert(trained, int8, representative):
        converter = tf.lite.TFLiteConverter.from_keras_model(trained)
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        if int8:
            converter.optimizations.append(tf.lite.Optimize.DEFAULT)
        if representative:
            converter.representative_dataset = lambda: (
                [calibration[i : i + 1]] for i in range(len(calibration))
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter.convert()

    def step(name, make):
        """One row: `make()` returns (file, Keras accuracy); a failure is kept as the row's error."""
        start = time.perf_counter()
        try:
            flatbuffer, keras_accuracy = make()
        except Exception as error:  # the row reports what tfmot could not do
            message = re.sub(r"\{\{function_node [^}]*\}\}", "", str(error)).strip()
            first = message.splitlines()[0] if message else ""
            rows.append({"name": name, "error": f"{type(error).__name__}: {first}"})
            return
        path = os.path.join(folder, f"{len(rows)}.tflite")
        with open(path, "wb") as file:
            file.write(flatbuffer)
        rows.append(
            {"name": name, "file": path, "keras": keras_accuracy, "seconds": time.perf_counter() - start}
        )

    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0, config["sparsity"], 0, config["end_step"], frequency=config["frequency"]
    )
    pruned = compile_model(
        keras, tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule), 3e-3
    )
    pruned.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=config["epochs"],
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    final = tfmot.sparsity.keras.strip_pruning(pruned)
    float_accuracy = accuracy(final, x_test, y_test)
    step("tfmot pruned, float32 sparse", lambda: (convert(final, False, False), float_accuracy))
    step("tfmot pruned + int8 PTQ", lambda: (convert(final, True, True), float_accuracy))

    def pqat():
        keras.utils.set_random_seed(SEED)
        annotated = tfmot.quantization.keras.quantize_annotate_model(final)
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        qat = compile_model(
            keras, tfmot.quantization.keras.quantize_apply(annotated, scheme), config["qat_learning_rate"]
        )
        qat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=config["qat_epochs"], verbose=0)
        return convert(qat, True, False), accuracy(qat, x_test, y_test)

    step("tfmot pruned + PQAT int8", pqat)

    clusters = config["clusters"]
    clustered = {}

    def cluster(init):
        keras.utils.set_random_seed(SEED)
        wrapped = tfmot.clustering.keras.cluster_weights(
            final,
            number_of_clusters=clusters,
            cluster_centroids_init=getattr(tfmot.clustering.keras.CentroidInitialization, init),
            preserve_sparsity=True,
        )
        compile_model(keras, wrapped, 1e-3)
        wrapped.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=config["finetune_epochs"], verbose=0)
        clustered["model"] = tfmot.clustering.keras.strip_clustering(wrapped)
        return convert(clustered["model"], True, True), accuracy(clustered["model"], x_test, y_test)

    # k-means++ as tfsparse's rows; where tfmot's fails, its linear initialization is the fallback.
    step(
        f"tfmot pruned + clustered ({clusters}, kmeans++, sparsity kept) + int8",
        lambda: cluster("KMEANS_PLUS_PLUS"),
    )
    if "error" in rows[-1]:
        step(
            f"tfmot pruned + clustered ({clusters}, linear, sparsity kept) + int8", lambda: cluster("LINEAR")
        )

    def pcqat():
        if "model" not in clustered:
            raise RuntimeError("clustering failed above")
        keras.utils.set_random_seed(SEED)
        annotated = tfmot.quantization.keras.quantize_annotate_model(clustered["model"])
        scheme = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
        qat = compile_model(
            keras, tfmot.quantization.keras.quantize_apply(annotated, scheme), config["qat_learning_rate"]
        )
        qat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=config["qat_epochs"], verbose=0)
        return convert(qat, True, False), accuracy(qat, x_test, y_test)

    step(f"tfmot pruned + clustered ({clusters}) + PCQAT int8", pcqat)
    with open(os.path.join(folder, "rows.json"), "w") as file:
        json.dump({"float_accuracy": float_accuracy, "rows": rows}, file)


def tfmot_rows(model_name, dense_weights, args):
    """tfmot's rows for `model_name`, measured here in LiteRT like tfsparse's; (rows, seconds)."""
    sparsity = args.sparsity if model_name == "digits" else args.mobilenetv2_sparsity
    (x_train, _), (x_test, y_test) = data(model_name)
    schedule = pruning_schedule(sparsity, args.epochs, len(x_train))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        np.savez(os.path.join(folder, "dense_weights.npz"), *dense_weights)
        config = {
            "model": model_name,
            "sparsity": sparsity,
            "end_step": schedule.end_step,
            "frequency": schedule.frequency,
            "epochs": args.epochs,
            "qat_epochs": args.qat_epochs,
            "qat_learning_rate": args.qat_learning_rate,
            "finetune_epochs": args.finetune_epochs,
            "clusters": args.clusters[0],
        }
        with open(os.path.join(folder, "config.json"), "w") as file:
            json.dump(config, file)
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", KERAS_BACKEND="tensorflow")
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--tfmot-worker", folder],
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            reason = _short(lines[-1] if lines else f"exit status {done.returncode}")
            return [{"name": f"tfmot on {model_name}", "error": reason}], time.perf_counter() - start
        with open(os.path.join(folder, "rows.json")) as file:
            results = json.load(file)
        rows = []
        for result in results["rows"]:
            if "error" in result:
                rows.append({"name": result["name"], "error": _short(result["error"])})
                continue
            with open(result["file"], "rb") as file:
                flatbuffer = file.read()
            rows.append(measured_row(result["name"], flatbuffer, x_test, y_test, args.runs, result["keras"]))
    return rows, time.perf_counter() - start


# -- printing -----------------------------------------------------------------------------------------


def table(title, rows):
    """The rows as compression.py prints digits, plus whether the default delegates run each file."""
    from tfsparse.analysis.report import format_table

    cells = []
    for row in rows:
        if "error" in row:
            cells.append([row["name"], "-", "-", "-", "-", "-", "-", "fails: " + row["error"]])
            continue
        cells.append(
            [
                row["name"],
                "-" if row["keras"] is None else f"{row['keras']:.1%}",
                f"{row['accuracy']:.1%}",
                f"{row['sparsity']:.1%}",
                f"{row['bytes'] / 1024:.1f} KB",
                f"{row['gzip'] / 1024:.1f} KB",
                f"{row['latency'] * 1000:.1f} us" + ("*" if row["delegates"].startswith("fails") else ""),
                row["delegates"],
            ]
        )
    headers = [title, "Keras acc.", "TFLite acc.", "Sparsity", "Size", "Gzipped", "Latency", "XNNPack"]
    notes = [f"{row['name']}: {row['note']}" for row in rows if row.get("note")]
    return "\n".join([format_table(headers, cells, right=(1, 2, 3, 4, 5, 6)), *notes])


def print_tables(args):
    """The MobileNetV2 table and tfmot's tables for the models in `args.models`."""
    from importlib.metadata import version

    dense_weights = {}
    if "mobilenetv2" in args.models:
        start = time.perf_counter()
        rows, float_accuracy, samples, dense_weights["mobilenetv2"] = mobilenetv2_rows(args)
        print()
        print(table("MobileNetV2 0.35, 32x32", rows))
        by_name = {row["name"]: row for row in rows}
        changes = "".join(
            f"; {label} {by_name[name]['accuracy'] - float_accuracy:+.1%}"
            for label, name in (("PTQ int8", "pruned + int8 PTQ"), ("PQAT int8", "pruned + PQAT int8"))
            if "accuracy" in by_name[name]
        )
        print(
            f"\n{samples} test digits upscaled to 32x32x3; pruned to {args.mobilenetv2_sparsity:.0%} "
            f"over {args.epochs} epochs after {args.epochs} dense. Float pruned {float_accuracy:.1%}"
            f"{changes}. ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    if args.no_tfmot:
        return
    for model_name in args.models:
        if model_name not in dense_weights:
            dense_weights[model_name] = digits_dense_weights(args)
        rows, seconds = tfmot_rows(model_name, dense_weights[model_name], args)
        release = version("tensorflow-model-optimization")
        title = f"tfmot {release}, " + ("digits CNN" if model_name == "digits" else "MobileNetV2 0.35")
        print()
        print(table(title, rows))
        if any(row.get("delegates", "").startswith("fails") for row in rows):
            print(
                "* the default delegates fail to prepare the file: scored and timed on LiteRT's builtin kernels"
            )
        print(f"({model_name}: tf-keras subprocess and measurements, {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--tfmot-worker"] or len(sys.argv) != 3:
        sys.exit("usage: _compression_more.py --tfmot-worker FOLDER (run by compression.py)")
    tfmot_worker(sys.argv[2])
