"""Sparse and quantized together on the digits CNN: size, accuracy and latency of each pipeline.

The demo's CNN (tfsparse/demo.py) is trained on scikit-learn's 8x8 digits and pruned to 90% during
fit exactly as `tfsparse demo` does; from that pruned model come post-training int8 (PTQ),
pruning-preserving quantization-aware training (PQAT: `tfsparse.quantization.quantize_aware`),
weight clustering then int8, and low-rank factorization then int8. Every file comes from
`tfsparse.export.to_tflite` (verified in LiteRT) and is run with the default delegates (XNNPack).

A second table measures LiteRT's builtin sparse FULLY_CONNECTED kernels on a Dense-heavy MLP
(512-1024-1024-10) pruned to 90% in blocks: the sparse file on the builtin kernels
(`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`) against the dense file under XNNPack.
One thread, one sample per invocation, median of `--runs` invocations.

    python benchmarks/compression.py [--epochs 8] [--qat-epochs 3] [--runs 300]

MobileNetV2 (digits upscaled to 32x32) and tfmot's collaborative-optimization rows (tf-keras
subprocess) come from _compression_more.py: `--models digits mobilenetv2`, `--no-tfmot`, `--quick`.

Targets (issue 14): PQAT int8 within 0.2 points of the float pruned model; pruned + clustered
+ int8 gzipped at most 0.5x the pruned int8 gzipped file, losing at most 1 point.
"""

import argparse
import gzip
import os
import statistics
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _compression_more  # noqa: E402  (MobileNetV2 and tfmot's rows)
import numpy as np  # noqa: E402

SEED = 0
BATCH_SIZE = 32


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile(keras, model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), _loss(keras), metrics=["accuracy"])
    return model


def _latency_ms(flatbuffer, x, builtin, runs):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    interpreter = Interpreter(model_content=flatbuffer, experimental_op_resolver_type=resolver, num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    times = []
    for run in range(runs + 10):
        interpreter.set_tensor(index, x[run % len(x)][None])
        start = time.perf_counter()
        interpreter.invoke()
        if run >= 10:  # the first invocations warm caches up
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _row(name, flatbuffer, x_test, y_test, runs, keras_accuracy=None):
    from tfsparse import analysis
    from tfsparse.demo import tflite_accuracy

    weights = analysis.tflite_sparsity_report(flatbuffer).totals
    return {
        "name": name,
        "keras": keras_accuracy,
        "accuracy": tflite_accuracy(flatbuffer, x_test, y_test),
        "sparsity": weights.sparsity,
        "bytes": len(flatbuffer),
        "gzip": len(gzip.compress(flatbuffer, 9, mtime=0)),
        "latency": _latency_ms(flatbuffer, x_test, False, runs),
    }


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


def digits_rows(args):
    import keras

    import tfsparse
    from tfsparse import clustering, demo, lowrank, quantization

    keras.utils.set_random_seed(SEED)
    (x_train, y_train), (x_test, y_test) = demo.load_data(SEED)
    calibration = x_train[:200]
    steps = -(-len(x_train) // BATCH_SIZE)

    dense = _compile(keras, demo.build_model(), 3e-3)
    dense.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs, verbose=0)
    schedule = demo.pruning_schedule(args.sparsity, args.epochs, steps)
    pruned = _compile(keras, tfsparse.prune_low_magnitude(dense, pruning_schedule=schedule), 3e-3)
    pruned.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=args.epochs,
        verbose=0,
        callbacks=[tfsparse.UpdatePruningStep()],
    )
    final = tfsparse.strip_pruning(pruned)
    float_accuracy = _accuracy(final, x_test, y_test)

    def export(model, **options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the weights XNNPack cannot run sparse are named in the demo
            return tfsparse.export.to_tflite(model, **options)

    rows = [
        _row(
            "dense, float32",
            export(dense, sparse=False),
            x_test,
            y_test,
            args.runs,
            _accuracy(dense, x_test, y_test),
        ),
        _row("pruned, float32 sparse", export(final), x_test, y_test, args.runs, float_accuracy),
        _row(
            "pruned + int8 PTQ",
            export(final, quantize="int8", representative_data=calibration),
            x_test,
            y_test,
            args.runs,
            float_accuracy,
        ),
    ]

    keras.utils.set_random_seed(SEED)
    qat = _compile(keras, quantization.quantize_aware(final), args.qat_learning_rate)
    qat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.qat_epochs, verbose=0)
    rows.append(
        _row(
            "pruned + PQAT int8",
            export(qat, quantize="int8", representative_data=calibration),
            x_test,
            y_test,
            args.runs,
            _accuracy(qat, x_test, y_test),
        )
    )

    for clusters in args.clusters:
        keras.utils.set_random_seed(SEED)
        clustered = _compile(keras, clustering.cluster_weights(final, number_of_clusters=clusters), 1e-3)
        clustered.fit(
            x_train,
            y_train,
            batch_size=BATCH_SIZE,
            epochs=args.finetune_epochs,
            verbose=0,
            callbacks=[clustering.UpdateClusterAssignments(frequency=10)],
        )
        if clusters == args.clusters[0]:
            # Cluster-preserving QAT: the centroids train under the int8 rounding.
            keras.utils.set_random_seed(SEED)
            cqat = _compile(keras, quantization.quantize_aware(clustered), args.qat_learning_rate)
            cqat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.qat_epochs, verbose=0)
            cqat_row = _row(
                f"pruned + clustered ({clusters}) + QAT int8",
                export(cqat, quantize="int8", representative_data=calibration),
                x_test,
                y_test,
                args.runs,
                _accuracy(cqat, x_test, y_test),
            )
        clustered = clustering.strip_clustering(clustered)
        rows.append(
            _row(
                f"pruned + clustered ({clusters}) + int8",
                export(clustered, quantize="int8", representative_data=calibration),
                x_test,
                y_test,
                args.runs,
                _accuracy(clustered, x_test, y_test),
            )
        )

    rows.append(cqat_row)

    keras.utils.set_random_seed(SEED)
    factorization = lowrank.factorize(dense, rank=args.rank, layers=["dense"])
    factorized = _compile(keras, factorization.model, 1e-3)
    factorized.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.finetune_epochs, verbose=0)
    (split,) = factorization.layers
    rows.append(
        _row(
            f"low-rank (dense: rank {split.rank}, {split.parameters_after:,} of {split.parameters_before:,} params) + int8",
            export(factorized, sparse=False, quantize="int8", representative_data=calibration),
            x_test,
            y_test,
            args.runs,
            _accuracy(factorized, x_test, y_test),
        )
    )
    return rows, float_accuracy, len(y_test)


def builtin_sparse_rows(args):
    import keras

    import tfsparse
    from tfsparse.export import tflite

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((512,))
    hidden = keras.layers.Dense(1024, activation="relu")(inputs)
    hidden = keras.layers.Dense(1024, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    x = np.random.default_rng(SEED).normal(size=(64, 512)).astype("float32")
    rows = []
    for quantize, block in ((None, (4, 1)), ("int8", (16, 1))):
        pruned = tfsparse.prune_low_magnitude(
            model, pruning_schedule=tfsparse.ConstantSparsity(args.sparsity, 0), block_size=block
        )
        pruned.compile("adam", "mse")
        pruned.fit(
            x,
            np.zeros((64, 10)),
            epochs=1,
            batch_size=64,
            verbose=0,
            callbacks=[tfsparse.UpdatePruningStep()],
        )
        stripped = tfsparse.strip_pruning(pruned)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dense_file = tflite.to_tflite(stripped, sparse=False, quantize=quantize, representative_data=x)
            # The converter's own sparse file: FULLY_CONNECTED reads its block-sparse weight itself.
            sparse_file = tflite._convert(stripped, True, quantize, [x])
            default_file = tflite.to_tflite(stripped, sparse=True, quantize=quantize, representative_data=x)
        report = tfsparse.export.verify_tflite(sparse_file, stripped, x[:16], runs=1)
        rows.append(
            {
                "name": f"{quantize or 'float32'}, Keras block {block} (TFLite 1x{block[0]})",
                "dense_bytes": len(dense_file),
                "sparse_bytes": len(sparse_file),
                "dense_xnnpack": _latency_ms(dense_file, x, False, args.runs),
                "sparse_builtin": _latency_ms(sparse_file, x, True, args.runs),
                "default_bytes": len(default_file),
                "default_latency": _latency_ms(default_file, x, False, args.runs),
                "difference": report.max_abs_difference,
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=8, help="dense epochs, and again pruning epochs (as the demo)"
    )
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-learning-rate", type=float, default=1e-3)
    parser.add_argument("--clusters", type=int, nargs="+", default=[16, 4], help="one row per count")
    parser.add_argument("--rank", type=int, default=16, help="rank of the low-rank split of the 512x64 Dense")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="after clustering or factorizing")
    parser.add_argument("--runs", type=int, default=300, help="invocations timed per file")
    _compression_more.add_arguments(parser)
    args = parser.parse_args()
    _compression_more.apply_quick(args)
    if "digits" not in args.models:
        _compression_more.print_tables(args)
        return

    from tfsparse.analysis.report import format_table

    rows, float_accuracy, samples = digits_rows(args)
    cells = [
        [
            row["name"],
            "-" if row["keras"] is None else f"{row['keras']:.1%}",
            f"{row['accuracy']:.1%}",
            f"{row['sparsity']:.1%}",
            f"{row['bytes'] / 1024:.1f} KB",
            f"{row['gzip'] / 1024:.1f} KB",
            f"{row['latency'] * 1000:.1f} us",
        ]
        for row in rows
    ]
    headers = ["Digits CNN", "Keras acc.", "TFLite acc.", "Sparsity", "Size", "Gzipped", "Latency"]
    print(format_table(headers, cells, right=(1, 2, 3, 4, 5, 6)))
    by_name = {row["name"]: row for row in rows}
    pqat = by_name["pruned + PQAT int8"]["accuracy"]
    ptq = by_name["pruned + int8 PTQ"]
    clustered = by_name[f"pruned + clustered ({args.clusters[0]}) + int8"]
    print(
        f"\n{samples} test digits. Float pruned {float_accuracy:.1%}; PTQ int8 {ptq['accuracy'] - float_accuracy:+.1%}; "
        f"PQAT int8 {pqat - float_accuracy:+.1%} (target: within 0.2 points). Clustered int8 gzipped "
        f"{clustered['gzip'] / ptq['gzip']:.2f}x the pruned int8 file (target 0.5x), accuracy "
        f"{clustered['accuracy'] - ptq['accuracy']:+.1%} against it."
    )

    cells = [
        [
            row["name"],
            f"{row['dense_bytes'] / 1024:.0f} KB",
            f"{row['sparse_bytes'] / 1024:.0f} KB",
            f"{row['dense_xnnpack'] * 1000:.1f} us",
            f"{row['sparse_builtin'] * 1000:.1f} us",
            f"{row['dense_xnnpack'] / row['sparse_builtin']:.2f}x",
            f"{row['default_bytes'] / 1024:.0f} KB, {row['default_latency'] * 1000:.1f} us",
        ]
        for row in builtin_sparse_rows(args)
    ]
    headers = [
        "MLP 512-1024-1024-10, 90%",
        "Dense file",
        "Sparse file",
        "Dense, XNNPack",
        "Sparse, builtin",
        "Speedup",
        "to_tflite(sparse=True), default delegates",
    ]
    print()
    print(format_table(headers, cells, right=(1, 2, 3, 4, 5, 6)))
    _compression_more.print_tables(args)


if __name__ == "__main__":
    main()
