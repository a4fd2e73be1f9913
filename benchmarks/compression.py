"""Sparse and quantized together on the digits CNN: size, accuracy and latency of each pipeline.

The demo's CNN (tfsparse/demo.py) is trained on scikit-learn's 8x8 digits and pruned to 90% during
fit exactly as `tfsparse demo` does; from that pruned model come post-training int8 (PTQ),
pruning-preserving quantization-aware training (PQAT: `tfsparse.quantization.quantize_aware`,
fitted to the float model's outputs with `tfsparse.Distiller`, then
`tfsparse.quantization.calibrate_logits_range`), weight clustering then int8, and low-rank
factorization then int8. One more pipeline prunes the 512x64 Dense layer in (16, 1) blocks (TFLite
1x16, which int8 FULLY_CONNECTED reads sparse itself), the rest as before, then clusters and
quantizes. `--splits n` repeats the comparisons on n other train/test splits. Every file comes from
`tfsparse.export.to_tflite` (verified in LiteRT) and is run with the default delegates (XNNPack).

A second table measures LiteRT's builtin sparse FULLY_CONNECTED kernels on a Dense-heavy MLP
(512-1024-1024-10) pruned to 90% in blocks: the sparse file on the builtin kernels
(`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`) against the dense file under XNNPack.
One thread, one sample per invocation, median of `--runs` invocations.

    python benchmarks/compression.py [--epochs 8] [--qat-epochs 3] [--runs 300] [--splits 3]

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
from _accuracy_tasks import compile_model  # noqa: E402
from _compression_more import accuracy  # noqa: E402

SEED = 0
BATCH_SIZE = 32


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


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


def _pqat(keras, final, x_train, y_train, args):
    """Pruning-preserving QAT: the int8 model learns the float model's outputs (distillation, so
    that fine-tuning does not also retrain it), then its logits get a range chosen by the softmax."""
    import tfsparse
    from tfsparse import quantization

    keras.utils.set_random_seed(SEED)
    qat = quantization.quantize_aware(final)
    trainer = tfsparse.Distiller(student=qat, teacher=final, temperature=4.0, alpha=0.5)
    trainer.compile(keras.optimizers.Adam(args.qat_learning_rate), _loss(keras))
    trainer.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.qat_epochs, verbose=0)
    quantization.calibrate_logits_range(qat, x_train)
    return qat


def _prune(keras, dense, x_train, y_train, args, blocks=None):
    """`dense` pruned during fit as the demo does; with `blocks`, its first Dense layer (the
    512x64 one) in (16, 1) blocks to `blocks` sparsity, which int8 FULLY_CONNECTED keeps sparse,
    over `--block-epochs` (a layer pruned in blocks needs longer to recover: at 93%, 96.4% float after 8
    epochs, 97.6% after 16 on the benchmark's split)."""
    import tfsparse
    from tfsparse import demo

    steps = -(-len(x_train) // BATCH_SIZE)
    epochs = args.epochs if blocks is None else args.block_epochs
    schedule = demo.pruning_schedule(args.sparsity, epochs, steps)
    if blocks is None:
        model = tfsparse.prune_low_magnitude(dense, pruning_schedule=schedule)
    else:
        first = next(layer.name for layer in dense.layers if isinstance(layer, keras.layers.Dense))

        def clone_function(layer):
            copy = layer.__class__.from_config(layer.get_config())
            copy.build_from_config(layer.get_build_config())
            copy.set_weights(layer.get_weights())
            if layer.name == first:
                block_schedule = demo.pruning_schedule(blocks, epochs, steps)
                return tfsparse.PruneLowMagnitude(copy, pruning_schedule=block_schedule, block_size=(16, 1))
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
                return tfsparse.PruneLowMagnitude(copy, pruning_schedule=schedule)
            return copy

        model = keras.models.clone_model(dense, clone_function=clone_function)
    pruned = compile_model(keras, model, 3e-3)
    pruned.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        verbose=0,
        callbacks=[tfsparse.UpdatePruningStep()],
    )
    return tfsparse.strip_pruning(pruned)


def _cluster(keras, final, x_train, y_train, clusters, args):
    from tfsparse import clustering

    keras.utils.set_random_seed(SEED)
    clustered = compile_model(keras, clustering.cluster_weights(final, number_of_clusters=clusters), 1e-3)
    clustered.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=args.finetune_epochs,
        verbose=0,
        callbacks=[clustering.UpdateClusterAssignments(frequency=10)],
    )
    return clustered


def _blocks_clustered(keras, dense, x_train, y_train, args):
    """The Dense layer pruned in 16-blocks, the rest as the demo, then clustered and stripped."""
    from tfsparse import clustering

    blocked = _prune(keras, dense, x_train, y_train, args, blocks=args.block_sparsity)
    return clustering.strip_clustering(_cluster(keras, blocked, x_train, y_train, args.block_clusters, args))


def digits_rows(args):
    import keras

    import tfsparse
    from tfsparse import clustering, demo, lowrank, quantization

    keras.utils.set_random_seed(SEED)
    (x_train, y_train), (x_test, y_test) = demo.load_data(SEED)
    calibration = x_train[:200]

    dense = compile_model(keras, demo.build_model(), 3e-3)
    dense.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs, verbose=0)
    final = _prune(keras, dense, x_train, y_train, args)
    float_accuracy = accuracy(final, x_test, y_test)

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
            accuracy(dense, x_test, y_test),
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

    qat = _pqat(keras, final, x_train, y_train, args)
    rows.append(
        _row(
            "pruned + PQAT int8",
            export(qat, quantize="int8", representative_data=calibration),
            x_test,
            y_test,
            args.runs,
            accuracy(qat, x_test, y_test),
        )
    )

    for clusters in args.clusters:
        clustered = _cluster(keras, final, x_train, y_train, clusters, args)
        if clusters == args.clusters[0]:
            # Cluster-preserving QAT: the centroids train under the int8 rounding.
            keras.utils.set_random_seed(SEED)
            cqat = compile_model(keras, quantization.quantize_aware(clustered), args.qat_learning_rate)
            cqat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.qat_epochs, verbose=0)
            cqat_row = _row(
                f"pruned + clustered ({clusters}) + QAT int8",
                export(cqat, quantize="int8", representative_data=calibration),
                x_test,
                y_test,
                args.runs,
                accuracy(cqat, x_test, y_test),
            )
        clustered = clustering.strip_clustering(clustered)
        rows.append(
            _row(
                f"pruned + clustered ({clusters}) + int8",
                export(clustered, quantize="int8", representative_data=calibration),
                x_test,
                y_test,
                args.runs,
                accuracy(clustered, x_test, y_test),
            )
        )

    rows.append(cqat_row)

    # Block-sparse int8 FULLY_CONNECTED weights stay sparse in the file (see tfsparse/export/tflite.py).
    keras.utils.set_random_seed(SEED)
    shared = _blocks_clustered(keras, dense, x_train, y_train, args)
    rows.append(
        _row(
            f"pruned, Dense in 16-blocks ({args.block_sparsity:.0%}, {args.block_epochs} ep.) + clustered ({args.block_clusters}) + int8",
            export(shared, quantize="int8", representative_data=calibration),
            x_test,
            y_test,
            args.runs,
            accuracy(shared, x_test, y_test),
        )
    )

    keras.utils.set_random_seed(SEED)
    factorization = lowrank.factorize(dense, rank=args.rank, layers=["dense"])
    factorized = compile_model(keras, factorization.model, 1e-3)
    factorized.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.finetune_epochs, verbose=0)
    (split,) = factorization.layers
    rows.append(
        _row(
            f"low-rank (dense: rank {split.rank}, {split.parameters_after:,} of {split.parameters_before:,} params) + int8",
            export(factorized, sparse=False, quantize="int8", representative_data=calibration),
            x_test,
            y_test,
            args.runs,
            accuracy(factorized, x_test, y_test),
        )
    )
    return rows, float_accuracy, len(y_test)


def other_splits(args):
    """Float, PTQ int8, PQAT int8 and 16-blocks + clustered + int8 accuracy of the pruned digits CNN
    on further train/test splits (seeds 1..n): one split of 450 digits moves in steps of 0.22 points."""
    import keras

    from tfsparse import demo
    from tfsparse.demo import tflite_accuracy
    from tfsparse.export import to_tflite

    rows = []
    for seed in range(1, args.splits + 1):
        keras.utils.set_random_seed(seed)
        (x_train, y_train), (x_test, y_test) = demo.load_data(seed)
        dense = compile_model(keras, demo.build_model(), 3e-3)
        dense.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs, verbose=0)
        final = _prune(keras, dense, x_train, y_train, args)
        keras.utils.set_random_seed(seed)
        shared = _blocks_clustered(keras, dense, x_train, y_train, args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ptq = to_tflite(final, quantize="int8", representative_data=x_train[:200])
            pqat = to_tflite(
                _pqat(keras, final, x_train, y_train, args),
                quantize="int8",
                representative_data=x_train[:200],
            )
            blocks = to_tflite(shared, quantize="int8", representative_data=x_train[:200])
        correct = [
            round(share * len(y_test))
            for share in (
                accuracy(final, x_test, y_test),
                tflite_accuracy(ptq, x_test, y_test),
                tflite_accuracy(pqat, x_test, y_test),
                tflite_accuracy(blocks, x_test, y_test),
            )
        ]
        ratio = len(gzip.compress(blocks, 9, mtime=0)) / len(gzip.compress(ptq, 9, mtime=0))
        rows.append((seed, len(y_test), *correct, ratio))
    return rows


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
    parser.add_argument(
        "--block-sparsity", type=float, default=0.94, help="of the 512x64 Dense in (16, 1) blocks, last row"
    )
    parser.add_argument("--block-clusters", type=int, default=8, help="clusters of the last row")
    parser.add_argument("--rank", type=int, default=16, help="rank of the low-rank split of the 512x64 Dense")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="after clustering or factorizing")
    parser.add_argument(
        "--splits", type=int, default=0, help="also compare PTQ, PQAT and 16-blocks on this many other splits"
    )
    parser.add_argument("--block-epochs", type=int, default=16, help="pruning epochs of the 16-blocks row")
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
    blocks = next(row for row in rows if row["name"].startswith("pruned, Dense in 16-blocks"))
    print(
        f"\n{samples} test digits. Float pruned {float_accuracy:.1%}; PTQ int8 {ptq['accuracy'] - float_accuracy:+.1%}; "
        f"PQAT int8 {pqat - float_accuracy:+.1%} (target: within 0.2 points). Clustered int8 gzipped "
        f"{clustered['gzip'] / ptq['gzip']:.2f}x the pruned int8 file (target 0.5x), accuracy "
        f"{clustered['accuracy'] - ptq['accuracy']:+.1%} against it; with the Dense in 16-blocks "
        f"{blocks['gzip'] / ptq['gzip']:.3f}x, accuracy {blocks['accuracy'] - ptq['accuracy']:+.1%} against "
        f"it and {blocks['accuracy'] - float_accuracy:+.1%} against float (target: at most 1 point lost)."
    )

    if args.splits:
        splits = other_splits(args)
        cells = [
            [
                str(seed),
                f"{f / n:.1%}",
                f"{p / n:.1%} ({p - f:+d})",
                f"{q / n:.1%} ({q - f:+d})",
                f"{b / n:.1%} ({b - p:+d} / {b - f:+d})",
                f"{ratio:.3f}x",
            ]
            for seed, n, f, p, q, b, ratio in splits
        ]
        n, f, p, q, b = (sum(split[i] for split in splits) for i in range(1, 6))
        cells.append(
            [
                "all",
                f"{f / n:.2%}",
                f"{p / n:.2%} ({p - f:+d})",
                f"{q / n:.2%} ({q - f:+d})",
                f"{b / n:.2%} ({b - p:+d} / {b - f:+d})",
                "",
            ]
        )
        headers = [
            "Split seed",
            "Float pruned",
            "int8 PTQ (digits)",
            "PQAT int8 (digits)",
            "16-blocks + clustered + int8 (vs PTQ / float)",
            "Gzipped vs PTQ",
        ]
        print()
        print(format_table(headers, cells, right=(1, 2, 3, 4, 5)))

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
