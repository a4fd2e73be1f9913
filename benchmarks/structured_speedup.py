"""Does structured pruning make models faster? Parameters, FLOPs and latency after removing channels.

For ResNet50, MobileNetV2, a small transformer encoder and the demo's digits CNN, at ratios 0.25,
0.5 and 0.75 (`tfsparse.structured.prune`, importance "l2"), each column is the pruned model's
value as a share of the unpruned model's: parameters, FLOPs (the ideal for latency), and the
median latency in Keras on the CPU at batch 1 and 32 and in LiteRT (XNNPack, float32, batch 1),
each model family measured in interleaved rounds (`measure_latencies`) so that a machine getting
busier or quieter slows all of its models alike.
A latency share at the FLOP share means the pruning paid off in full. Also: the time to build
ResNet50's dependency graph and prune it, and, on digits, "50% of channels removed, then
fine-tuned" against the dense model and against unstructured pruning to the same parameter count.
The digits comparison has one structured row per channel importance: "l1" and "l2" (norms), "lsh"
(near-duplicate channels merged into the one they copy) and "fpgm" (channels nearest the geometric
median of their group); at one ratio each removes as many channels from each group, so all rows
have the same FLOPs, and each is fine-tuned with the same epochs, batches and shuffling.

    python benchmarks/structured_speedup.py [--quick] [--repeats 10] [--digits-only]
        [--importances l1,l2,lsh,fpgm]

`--quick` measures the ImageNet models at 96x96 instead of 224x224 and with fewer repeats (the
shares are what matter; absolute times shrink with the input). `--digits-only` runs only the digits
comparison (no ImageNet models), `--importances` chooses its structured rows.

Targets: LiteRT speedup at least 0.8x the FLOP reduction on ResNet50 at ratio 0.5; graph + prune of
ResNet50 under 5 s; the structured digits CNN within 1 point of dense accuracy after fine-tuning,
at no more than 0.5x its latency.
"""

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfsparse import analysis, structured  # noqa: E402
from tfsparse.analysis import count_flops, measure_latencies  # noqa: E402
from tfsparse.analysis.report import format_table  # noqa: E402

RATIOS = (0.25, 0.5, 0.75)
DIGITS_IMPORTANCES = ("l1", "l2", "lsh", "fpgm")


def transformer_encoder(sequence: int = 64, width: int = 128, heads: int = 4, layers: int = 2) -> keras.Model:
    """A small post-norm transformer encoder classifier over `sequence` tokens of `width` features."""
    inputs = keras.Input((sequence, width), name="tokens")
    x = inputs
    for index in range(layers):
        attention = keras.layers.MultiHeadAttention(heads, width // heads, name=f"layer{index}_attention")(
            x, x
        )
        x = keras.layers.LayerNormalization(name=f"layer{index}_norm1")(x + attention)
        hidden = keras.layers.Dense(4 * width, activation="gelu", name=f"layer{index}_ffn1")(x)
        x = keras.layers.LayerNormalization(name=f"layer{index}_norm2")(
            x + keras.layers.Dense(width, name=f"layer{index}_ffn2")(hidden)
        )
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="transformer_encoder")


def models(side: int) -> dict:
    from tfsparse.demo import build_model

    return {
        "ResNet50": lambda: keras.applications.ResNet50(
            weights=None, input_shape=(side, side, 3), classes=1000
        ),
        "MobileNetV2": lambda: keras.applications.MobileNetV2(
            weights=None, input_shape=(side, side, 3), classes=1000
        ),
        "Transformer encoder": transformer_encoder,
        "Digits CNN": build_model,
    }


def latencies(models: list, repeats: int) -> list[tuple[float, float, float]]:
    """Median ms per model: Keras batch 1, Keras batch 32, LiteRT batch 1, measured interleaved."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        columns = (
            measure_latencies(models, "keras", 1, repeats=repeats),
            measure_latencies(models, "keras", 32, repeats=max(3, repeats // 3), rounds=3),
            measure_latencies(models, "litert", 1, repeats=repeats * 5),
        )
    return list(zip(*columns))


def speedup_rows(side: int, repeats: int) -> list[list[str]]:
    rows = []
    for name, build in models(side).items():
        model = build()
        smalls = [structured.prune(model, ratio=r, round_to=8 if name != "Digits CNN" else 1) for r in RATIOS]
        base, *measured = latencies([model, *smalls], repeats)
        base_params, base_flops = model.count_params(), count_flops(model)
        rows.append(
            [name, "0", f"{base_params:,}", f"{base_flops / 1e6:,.1f} M"]
            + [f"{value:.3f} ms" for value in base]
            + ["-"]
        )
        print(" | ".join(rows[-1]), flush=True)
        for ratio, small, times in zip(RATIOS, smalls, measured):
            flops = count_flops(small) / base_flops
            shares = [value / reference for value, reference in zip(times, base)]
            litert_speedup, flop_reduction = 1 / shares[2], 1 / flops
            rows.append(
                [name, f"{ratio:g}", f"{small.count_params() / base_params:.2f}", f"{flops:.2f}"]
                + [f"{share:.2f}" for share in shares]
                + [f"{litert_speedup / flop_reduction:.2f}"]
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows


def graph_and_prune_time(side: int) -> tuple[float, float]:
    model = keras.applications.ResNet50(weights=None, input_shape=(side, side, 3), classes=1000)
    start = time.perf_counter()
    structured.DependencyGraph(model)
    graph_seconds = time.perf_counter() - start
    start = time.perf_counter()
    structured.prune(model, ratio=0.5)
    return graph_seconds, time.perf_counter() - start


def digits_comparison(
    epochs: int, repeats: int, importances: tuple[str, ...] = DIGITS_IMPORTANCES
) -> list[list[str]]:
    """Dense; 50% of channels removed + fine-tuned, once per importance; unstructured at the same count.

    Every structured model is fine-tuned from the same dense weights with the same seed, so the
    rows differ only in which channels the importance removed (and, for "lsh", the merging).
    """
    import tfsparse
    from tfsparse.demo import _compile, build_model, load_data, pruning_schedule
    from tfsparse.export import to_tflite

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_data()
    dense = build_model()
    _compile(dense)
    dense.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)

    def accuracy(model):
        return float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))

    smalls = []
    for importance in importances:
        small = structured.prune(dense, ratio=0.5, importance=importance)
        before = accuracy(small)
        keras.utils.set_random_seed(1)
        _compile(small)
        small.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
        smalls.append((importance, small, before))

    sparsity = 1 - smalls[0][1].count_params() / dense.count_params()
    steps = -(-len(x_train) // 32)
    keras.utils.set_random_seed(1)
    pruned = tfsparse.prune_low_magnitude(dense, pruning_schedule=pruning_schedule(sparsity, epochs, steps))
    _compile(pruned)
    pruned.fit(
        x_train, y_train, batch_size=32, epochs=epochs, callbacks=[tfsparse.UpdatePruningStep()], verbose=0
    )
    unstructured = tfsparse.strip_pruning(pruned)

    def litert_ms(model, sparse):
        from tfsparse.export import verify_tflite

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return verify_tflite(
                to_tflite(model, sparse=sparse), model, x_test[:32], runs=repeats * 20
            ).latency_ms

    rows = []
    dense_accuracy, dense_ms, dense_flops = accuracy(dense), litert_ms(dense, False), count_flops(dense)
    candidates = [("Dense", dense, False, "-")]
    candidates += [
        (f"Structured, {importance}: 50% of channels removed", small, False, f"{before:.1%}")
        for importance, small, before in smalls
    ]
    candidates.append(
        (f"Unstructured: {sparsity:.0%} of weights zeroed (same non-zeros)", unstructured, True, "-")
    )
    for name, model, sparse, before in candidates:
        parameters = analysis.count_parameters(model)
        milliseconds = dense_ms if model is dense else litert_ms(model, sparse)
        model_accuracy = dense_accuracy if model is dense else accuracy(model)
        flops = "1.00" if sparse or model is dense else f"{count_flops(model) / dense_flops:.2f}"
        rows.append(
            [
                name,
                before,
                f"{model_accuracy:.1%}",
                f"{parameters.nonzero:,}",
                flops,
                f"{milliseconds * 1000:.1f} us",
                f"{milliseconds / dense_ms:.2f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def importance_list(text: str) -> tuple[str, ...]:
    """`--importances`: comma-separated structured importances that need no data."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DIGITS_IMPORTANCES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--importances takes a comma-separated subset of {','.join(DIGITS_IMPORTANCES)}. "
            f"Received: {text!r}"
        )
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="96x96 ImageNet inputs, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per latency (10; quick 5)")
    parser.add_argument("--epochs", type=int, default=8, help="digits training and fine-tuning epochs (8)")
    parser.add_argument(
        "--digits-only", action="store_true", help="only the digits comparison, no ImageNet models"
    )
    parser.add_argument(
        "--importances",
        type=importance_list,
        default=DIGITS_IMPORTANCES,
        help=f"structured rows of the digits comparison ({','.join(DIGITS_IMPORTANCES)})",
    )
    args = parser.parse_args()
    side = 96 if args.quick else 224
    repeats = args.repeats or (5 if args.quick else 10)

    if not args.digits_only:
        graph_seconds, prune_seconds = graph_and_prune_time(224)
        print(
            f"ResNet50 (224x224): dependency graph alone {graph_seconds:.2f} s; structured.prune at ratio 0.5, "
            f"which builds its own graph, {prune_seconds:.2f} s (target: under 5 s)\n"
        )

        rows = speedup_rows(side, repeats)
        print()
        print(
            f"Each pruned row as a share of its unpruned model (ImageNet models at {side}x{side}; median "
            "latency; LiteRT is float32 with XNNPack). Ideal: latency share = FLOP share; the last column is "
            "LiteRT's speedup over the FLOP reduction (target >= 0.8 for ResNet50 at 0.5)."
        )
        headers = ["Model", "Ratio", "Params", "FLOPs", "Keras b1", "Keras b32", "LiteRT b1", "LiteRT/ideal"]
        print(format_table(headers, rows, right=range(1, 8)))
        print()

    rows = digits_comparison(args.epochs, repeats, args.importances)
    print()
    print(
        f"Digits CNN, {args.epochs} epochs of training and of fine-tuning (the same for every row), "
        "accuracy before and after fine-tuning, FLOPs as a share of dense, LiteRT float32 latency per image:"
    )
    print(
        format_table(
            ["Model", "Before", "Accuracy", "Non-zero parameters", "FLOPs", "LiteRT", "Latency share"],
            rows,
            right=range(1, 7),
        )
    )


if __name__ == "__main__":
    main()
