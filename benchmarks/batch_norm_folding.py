"""PQAT int8 MobileNetV2 with and without batch normalization folded before fake quantization.

MobileNetV2 (alpha 0.35, 32x32, weights=None, as in compression.py) trained briefly on the digits
upscaled to 32x32, pruned to 75% in one shot (magnitude), batch-norm statistics re-estimated
(one epoch at learning rate 0), then: post-training int8 (PTQ), and
`quantize_aware(..., fold_batch_norm=False)` / `fold_batch_norm=True`, each fitted for the same
short QAT epochs and exported int8 with `to_tflite`. Prints each file's MUL/ADD op counts, test
accuracy, size and LiteRT latency (XNNPack, one thread, median of `--runs`, as compression.py
times them) and the load average.

    python benchmarks/batch_norm_folding.py [--epochs 2] [--qat-epochs 1] [--runs 100] [--quick]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _op_counts(flatbuffer):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    names = [node["op_name"] for node in interpreter._get_ops_details()]  # op names: no public API
    return names.count("MUL"), names.count("ADD"), len(names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="dense training epochs")
    parser.add_argument("--qat-epochs", type=int, default=1, help="QAT epochs of each variant")
    parser.add_argument("--qat-learning-rate", type=float, default=1e-3)
    parser.add_argument("--runs", type=int, default=100, help="timed invocations per file")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 QAT epoch, 30 runs")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.qat_epochs, args.runs = 1, 1, 30

    import keras
    from _compression_more import (
        BATCH_SIZE,
        CALIBRATION,
        SEED,
        accuracy,
        build,
        compile_model,
        export,
        upscaled_digits,
    )
    from compression import _latency_ms
    from tflite_size import tflite_accuracy

    import tfsparse
    from tfsparse import quantization

    (x_train, y_train), (x_test, y_test) = upscaled_digits()
    keras.utils.set_random_seed(SEED)
    dense = compile_model(keras, build(keras, "mobilenetv2"), 3e-3)
    dense.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.epochs, verbose=0)
    pruned = tfsparse.prune_oneshot(dense, 0.75, criterion="magnitude")
    # One-shot pruning leaves the batch-norm statistics of the dense model; an epoch at learning
    # rate 0 re-estimates them (the weights, zeros included, do not move), as folding needs.
    compile_model(keras, pruned, 0.0).fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=1, verbose=0)
    calibration = x_train[:CALIBRATION]
    files = {"pruned + int8 PTQ": (*export(pruned, quantize="int8", representative_data=calibration), None)}
    for fold in (False, True):
        keras.utils.set_random_seed(SEED)
        qat = compile_model(
            keras, quantization.quantize_aware(pruned, fold_batch_norm=fold), args.qat_learning_rate
        )
        qat.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.qat_epochs, verbose=0)
        # `export`: to_tflite's file, or where its check against Keras refuses it, the file all the same
        exported = export(qat, quantize="int8", representative_data=calibration)
        files[f"PQAT int8, fold_batch_norm={fold}"] = (*exported, accuracy(qat, x_test, y_test))
    print(
        f"MobileNetV2 0.35 32x32, {args.epochs} epochs, pruned 75% one-shot, {args.qat_epochs} QAT epoch(s)"
    )
    print(
        f"{'File':36} {'MUL':>4} {'ADD':>4} {'Ops':>4} {'Keras':>6} {'TFLite':>6} {'Size':>9} {'Latency':>9}"
    )
    notes = []
    for name, (flatbuffer, note, keras_accuracy) in files.items():
        if note:
            notes.append(f"{name}: {note}")
        muls, adds, ops = _op_counts(flatbuffer)
        latency = _latency_ms(flatbuffer, x_test, False, args.runs) * 1e3
        keras_text = f"{keras_accuracy:.1%}" if keras_accuracy is not None else "-"
        print(
            f"{name:36} {muls:4} {adds:4} {ops:4} {keras_text:>6} {tflite_accuracy(flatbuffer, x_test, y_test):6.1%} "
            f"{len(flatbuffer) / 1024:7.1f}KB {latency:7.1f}us"
        )
    print("\n".join(notes))
    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
