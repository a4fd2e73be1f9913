"""The `tfsparse demo` job: train, prune to 90% during fit, strip, export and measure, on digits;
and, beside it, the same CNN with half of its channels removed (structured pruning), which runs faster.

Data are scikit-learn's 8x8 digits, which ship with the package (nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import tempfile
import warnings

import keras
import numpy as np

from tfsparse import analysis, structured
from tfsparse._files import check_output_file, write_atomically
from tfsparse.analysis.report import format_table
from tfsparse.callbacks import UpdatePruningStep
from tfsparse.prune import prune_low_magnitude, strip_pruning
from tfsparse.schedules import PolynomialDecay

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

FILES = {
    "dense_keras": "digits_dense.keras",
    "pruned_keras": "digits_pruned.keras",
    "float32_dense": "digits_float32_dense.tflite",
    "float32_sparse": "digits_float32_sparse.tflite",
    "int8_sparse": "digits_int8_sparse.tflite",
    "structured_keras": "digits_structured.keras",
    "float32_structured": "digits_float32_structured.tflite",
}

# The share of each layer's channels the structured row removes.
STRUCTURED_RATIO = 0.5


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """One line of the demo's table: a model as Keras or as a TFLite file, and what it measures."""

    name: str
    accuracy: float
    sparsity: float
    parameters: int
    nonzero_parameters: int
    size_bytes: int
    gzip_bytes: int
    latency_ms: float | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """The demo's rows, the sparsity the pruned weights reached, and where the files were written."""

    rows: tuple[DemoRow, ...]
    target_sparsity: float
    reached_sparsity: float
    test_samples: int
    output_dir: str | None

    def table(self) -> str:
        headers = ["Model", "Accuracy", "Sparsity", "Parameters (non-zero / total)", "Size", "Gzipped"]
        headers.append("Latency")
        cells = []
        for row in self.rows:
            latency = "-" if row.latency_ms is None else _duration(row.latency_ms)
            cells.append(
                [
                    row.name,
                    f"{row.accuracy:.1%}",
                    f"{row.sparsity:.1%}",
                    f"{row.nonzero_parameters:,} / {row.parameters:,}",
                    _kilobytes(row.size_bytes),
                    _kilobytes(row.gzip_bytes),
                    latency,
                ]
            )
        text = format_table(headers, cells, right=(1, 2, 3, 4, 5, 6))
        notes = [f"{row.name}: {row.note}" for row in self.rows if row.note]
        return "\n".join([text, *notes])


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _duration(milliseconds: float) -> str:
    return f"{milliseconds * 1000:.1f} us" if milliseconds < 1 else f"{milliseconds:.2f} ms"


def _kilobytes(size: int) -> str:
    return f"{size / 1024:.1f} KB"


def load_data(seed: int = 0):
    """Digits as float32 images in [0, 1] of shape (8, 8, 1): (x_train, y_train), (x_test, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def build_model(keras_module=None) -> keras.Model:
    """The demo's CNN: two convolutions, pooling and two dense layers; about 38,000 parameters.

    `keras_module` builds the same layers with another Keras (tf-keras, for tfmot comparisons);
    default: Keras 3.
    """
    keras = keras_module or globals()["keras"]
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _compile(model: keras.Model) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def pruning_schedule(sparsity: float, epochs: int, steps_per_epoch: int) -> PolynomialDecay:
    """From 0 to `sparsity` over the first two thirds of the pruning epochs, pruning 4 times an epoch.

    The end step is a multiple of the frequency after the begin step, so the last update of the
    masks lands on the final sparsity; the remaining steps let the kept weights recover.
    """
    frequency = max(1, steps_per_epoch // 4)
    updates = max(1, (2 * epochs * steps_per_epoch) // (3 * frequency))
    return PolynomialDecay(0.0, sparsity, begin_step=0, end_step=updates * frequency, frequency=frequency)


def _uncompiled(model: keras.Model) -> keras.Model:
    """A copy without optimizer state, so that the saved file holds what is deployed."""
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _keras_row(name: str, model: keras.Model, path: str, x_test, y_test) -> DemoRow:
    logits = model.predict(x_test, verbose=0)
    parameters = analysis.count_parameters(model)
    with open(path, "rb") as file:
        content = file.read()
    return DemoRow(
        name=name,
        accuracy=float(np.mean(np.argmax(logits, axis=1) == y_test)),
        sparsity=1.0 - parameters.nonzero / parameters.total,
        parameters=parameters.total,
        nonzero_parameters=parameters.nonzero,
        size_bytes=len(content),
        gzip_bytes=len(gzip.compress(content, compresslevel=9, mtime=0)),
    )


def tflite_accuracy(flatbuffer: bytes, x, y) -> float:
    """Accuracy of a one-input, one-output TFLite classifier, run one sample at a time in LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    correct = 0
    for sample, label in zip(x, y):
        interpreter.set_tensor(input_index, sample[None])
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(output_index)) == label)
    return correct / len(y)


def _tflite_row(name: str, flatbuffer: bytes, model: keras.Model, x_test, y_test, note: str) -> DemoRow:
    from tfsparse.export import verify_tflite

    report = verify_tflite(flatbuffer, model, x_test[:32])
    weights = analysis.tflite_sparsity_report(flatbuffer).totals
    return DemoRow(
        name=name,
        accuracy=tflite_accuracy(flatbuffer, x_test, y_test),
        sparsity=weights.sparsity,
        parameters=weights.size,
        nonzero_parameters=weights.nonzeros,
        size_bytes=report.size_bytes,
        gzip_bytes=report.gzip_bytes,
        latency_ms=report.latency_ms,
        note=" ".join(
            [note]
            + (
                []
                if report.fully_delegated
                else ["XNNPack left to builtin kernels:", *report.undelegated_ops]
            )
        ).strip(),
    )


def check_output_dir(output_dir: str, force: bool) -> None:
    """Refuses an output folder that holds any of the demo's files, unless `force`."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"{output_dir} is a file; --output-dir takes a folder.")
    if os.path.isdir(output_dir):
        for name in FILES.values():
            check_output_file(os.path.join(output_dir, name), force, (os.path.splitext(name)[1],))


def run_demo(
    epochs: int = 8,
    sparsity: float = 0.9,
    output_dir: str | None = None,
    force: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    verbose: int | str = "auto",
) -> DemoResult:
    """Trains the digits CNN, prunes it to `sparsity` during fit, exports three TFLite files, measures;
    then removes half of the dense CNN's channels, fine-tunes it and exports and measures that too.

    Args:
        epochs: epochs of dense training, and again of training with pruning.
        sparsity: the final sparsity of the pruned weights, in [0, 1).
        output_dir: where to keep the files (created if missing); None for a temporary folder that
            is removed at the end.
        force: replace the demo's files in `output_dir`.
        batch_size: training batch size.
        seed: seeds Keras, NumPy and the train/test split.
        verbose: Keras' `fit` verbosity (progress bars).

    Returns:
        A `DemoResult`; `result.table()` is the table the command prints.

    Example:

    ```python
    print(run_demo(epochs=2).table())
    ```
    """
    from tfsparse.export import to_tflite

    if output_dir is not None:
        check_output_dir(output_dir, force)
        os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_data(seed)
    steps_per_epoch = -(-len(x_train) // batch_size)

    with tempfile.TemporaryDirectory(prefix="tfsparse-demo-") as temporary:
        folder = output_dir or temporary
        paths = {key: os.path.join(folder, name) for key, name in FILES.items()}

        print(f"Training a dense CNN on {len(x_train):,} digits ({_epochs(epochs)})")
        model = build_model()
        _compile(model)
        model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)

        print(f"Training on with pruning to {sparsity:.0%} (PolynomialDecay, {_epochs(epochs)})")
        schedule = pruning_schedule(sparsity, epochs, steps_per_epoch)
        pruned = prune_low_magnitude(model, pruning_schedule=schedule)
        _compile(pruned)
        pruned.fit(
            x_train,
            y_train,
            batch_size=batch_size,
            epochs=epochs,
            callbacks=[UpdatePruningStep()],
            verbose=verbose,
        )
        final = strip_pruning(pruned)
        reached = analysis.sparsity_report(final).prunable_totals.sparsity

        tune_epochs = max(1, epochs // 2)
        print(
            f"Removing {STRUCTURED_RATIO:.0%} of the dense CNN's channels (structured pruning), "
            f"fine-tuning ({_epochs(tune_epochs)})"
        )
        small = structured.prune(model, ratio=STRUCTURED_RATIO)
        _compile(small)
        small.fit(x_train, y_train, batch_size=batch_size, epochs=tune_epochs, verbose=verbose)

        print("Exporting TFLite files and running them in LiteRT")
        write_atomically(paths["dense_keras"], _uncompiled(model).save)
        write_atomically(paths["pruned_keras"], _uncompiled(final).save)
        write_atomically(paths["structured_keras"], _uncompiled(small).save)
        exports = {
            "float32_dense": dict(sparse=False),
            "float32_sparse": dict(sparse=True),
            "int8_sparse": dict(sparse=True, quantize="int8", representative_data=x_train[:200]),
        }
        flatbuffers, notes = {}, {}
        for key, options in exports.items():
            # What the exporter had to give up (weights XNNPack cannot run sparse) goes under the table.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                flatbuffers[key] = to_tflite(final, paths[key], overwrite=force, **options)
            notes[key] = " ".join(str(w.message) for w in caught if w.filename.startswith(_PACKAGE_DIR))
        rows = (
            _keras_row("Keras, dense", model, paths["dense_keras"], x_test, y_test),
            _keras_row("Keras, pruned", final, paths["pruned_keras"], x_test, y_test),
        )
        for key, name in (
            ("float32_dense", "TFLite float32, dense"),
            ("float32_sparse", "TFLite float32, sparse"),
            ("int8_sparse", "TFLite int8, sparse"),
        ):
            rows += (_tflite_row(name, flatbuffers[key], final, x_test, y_test, notes[key]),)
        flatbuffers["float32_structured"] = to_tflite(
            small, paths["float32_structured"], sparse=False, overwrite=force
        )
        flops = analysis.count_flops(model), analysis.count_flops(small)
        note = (
            f"{STRUCTURED_RATIO:.0%} of each layer's channels removed (tfsparse.structured.prune), then "
            f"fine-tuned {_epochs(tune_epochs)}: FLOPs per image {flops[0]:,} -> {flops[1]:,}"
        )
        rows += (
            _tflite_row(
                "TFLite float32, structured", flatbuffers["float32_structured"], small, x_test, y_test, note
            ),
        )
    return DemoResult(rows, sparsity, reached, len(y_test), output_dir)
