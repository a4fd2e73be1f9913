"""How long a model takes to run: the median wall time of one call, in Keras or in LiteRT.

FLOPs say what a model costs in arithmetic; latency says what it costs on this machine, where
memory traffic, kernel choice and framework overhead decide as much. Structured pruning is judged
by both (`tfsparse.structured` warns when they disagree).
"""

from __future__ import annotations

import statistics
import time

import keras
import numpy as np

RUNTIMES = ("keras", "litert")


def _check_positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Argument `{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _input_shapes(model) -> list[tuple[tuple[int, ...], str]]:
    """(per-sample shape, dtype) of each input, refusing models whose inputs are not fully known."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `model` must be a Keras model. Received: model={model!r} of type {type(model).__name__}"
        )
    if not getattr(model, "inputs", None):
        raise ValueError(
            f"Argument `model` must be a Sequential or functional model with known inputs; "
            f"'{model.name}' ({type(model).__name__}) has none. Wrap it: "
            "`inputs = keras.Input(shape); model = keras.Model(inputs, model(inputs))`."
        )
    specs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape[1:])
        if any(dimension is None for dimension in shape):
            raise ValueError(
                f"Argument `model`: input '{tensor.name}' of model '{model.name}' has shape "
                f"{(None, *shape)} with an unknown dimension besides the batch; latency depends on it. "
                "Rebuild the model with a fixed `keras.Input(shape=...)`."
            )
        specs.append((shape, str(tensor.dtype)))
    return specs


def _sample_inputs(specs, batch_size: int) -> list[np.ndarray]:
    from tfsparse.export._files import random_inputs

    return random_inputs(specs, batch_size)


def _batched(model: keras.Model, specs, batch_size: int) -> keras.Model:
    """`model` as a model of one sample that holds `batch_size` of the original's samples.

    `tfsparse.export.to_tflite` traces files for one sample per invocation (XNNPack cannot resize
    a Keras 3 file's batch afterwards), so a batch is folded into the sample: the first dimension
    of each input and output is the original batch.
    """
    inputs = [keras.Input((batch_size, *shape), dtype=dtype) for shape, dtype in specs]
    unfolded = [keras.ops.reshape(tensor, (-1, *shape)) for tensor, (shape, _) in zip(inputs, specs)]
    outputs = model(unfolded if len(unfolded) > 1 else unfolded[0])
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    folded = [keras.ops.reshape(tensor, (-1, batch_size, *tensor.shape[1:])) for tensor in outputs]
    return keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        folded if len(folded) > 1 else folded[0],
        name=f"{model.name}_batch{batch_size}",
    )


def _litert_call(model: keras.Model, specs, batch_size: int):
    from tfsparse.export import to_tflite
    from tfsparse.export._litert import open_interpreter

    converted = model if batch_size == 1 else _batched(model, specs, batch_size)
    interpreter = open_interpreter(to_tflite(converted, sparse=False))
    # The inputs are random, so each is generated from the file's own shape and type: the file's
    # input order need not be the model's.
    for detail in interpreter.get_input_details():
        (array,) = _sample_inputs([(tuple(detail["shape"]), detail["dtype"])], 1)
        interpreter.set_tensor(detail["index"], array[0])
    return interpreter.invoke


def _checked(runtime, batch_size, repeats, warmup, rounds) -> tuple[int, int, int, int]:
    if not isinstance(runtime, str) or runtime not in RUNTIMES:
        raise ValueError(f"Argument `runtime` must be one of {RUNTIMES}. Received: runtime={runtime!r}")
    return (
        _check_positive("batch_size", batch_size),
        _check_positive("repeats", repeats),
        _check_positive("warmup", warmup, minimum=0),
        _check_positive("rounds", rounds),
    )


def _call(model: keras.Model, runtime: str, batch_size: int):
    specs = _input_shapes(model)
    if runtime == "litert":
        return _litert_call(model, specs, batch_size)
    arrays = _sample_inputs(specs, batch_size)
    batch = arrays if len(arrays) > 1 else arrays[0]

    def call():
        return model.predict_on_batch(batch)

    call()  # the first call traces and compiles the predict function
    return call


def measure_latency(
    model: keras.Model,
    runtime: str = "keras",
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 2,
) -> float:
    """The median time, in milliseconds, that `model` takes to process one batch on this machine.

    The model runs on standard-normal inputs of its input shapes (zeros and ones for integer
    inputs). The first `warmup` calls (tracing, weight packing, caches) are not timed; the result is
    the median of the next `repeats` calls, so one slow call does not move it.

    - `runtime="keras"`: `model.predict_on_batch` on the current Keras backend (a compiled
      function on TensorFlow and JAX), with all of the backend's threads.
    - `runtime="litert"`: the model is converted to a float32 TFLite file with
      `tfsparse.export.to_tflite` (which checks the file against the model) and invoked in the
      LiteRT interpreter with its default delegate (XNNPack). For `batch_size > 1` the file is
      traced with the batch folded into one sample, since a Keras 3 file cannot be resized.

    Pruned (wrapped) models are measured as they are in Keras and stripped for LiteRT. To compare
    models on a busy machine, use `measure_latencies`, which interleaves them.

    Args:
        model: a Sequential or functional Keras model whose input shapes are fully known.
        runtime: "keras" or "litert".
        batch_size: samples per call.
        repeats: timed calls; the median is returned.
        warmup: untimed calls before the timed ones.

    Returns:
        The median latency of one call, in milliseconds.

    Raises:
        ValueError: a bad argument, or a model without fixed input shapes.

    Example:

    ```python
    dense_ms = tfsparse.analysis.measure_latency(model, runtime="litert")
    small_ms = tfsparse.analysis.measure_latency(small, runtime="litert")
    print(f"speedup {dense_ms / small_ms:.2f}x")
    ```
    """
    return measure_latencies([model], runtime, batch_size, repeats, warmup, rounds=1)[0]


def measure_latencies(
    models,
    runtime: str = "keras",
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 2,
    rounds: int = 5,
) -> list[float]:
    """The median latency of each of `models`, in milliseconds, measured in interleaved rounds.

    Each round times every model in turn, `repeats // rounds` calls each (at least one), so that a
    machine that gets busier or quieter while measuring slows all models alike: the ratios between
    them stay fair. Otherwise as `measure_latency`.

    Args:
        models: Keras models (a list or tuple).
        runtime: "keras" or "litert".
        batch_size: samples per call.
        repeats: timed calls per model, spread over the rounds.
        warmup: untimed calls per model before the first round.
        rounds: how many times to go over the models.

    Returns:
        One median latency per model, in the order given.

    Example:

    ```python
    dense_ms, small_ms = tfsparse.analysis.measure_latencies([model, small], runtime="litert")
    ```
    """
    batch_size, repeats, warmup, rounds = _checked(runtime, batch_size, repeats, warmup, rounds)
    if not isinstance(models, (list, tuple)) or not models:
        raise ValueError(
            f"Argument `models` must be a non-empty list of Keras models. Received: models={models!r}"
        )
    calls = [_call(model, runtime, batch_size) for model in models]
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for call, timed in zip(calls, times):
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                timed.append(time.perf_counter() - start)
    return [statistics.median(timed) * 1e3 for timed in times]
