"""How long `tfsparse.sensitivity_scan` takes: wall time and CPU time of one scan.

The issue's budget: ResNet50 (`keras.applications.ResNet50(weights=None)`, 10 classes) at 64x64
on 256 samples, every prunable layer (54) at the scan's six default sparsities, under 3 minutes on
2 CPU cores. Each row is one scan in this process, timed end to end (pruned copy, scores,
activations, every measurement): wall seconds, CPU seconds of this process (user + system, from
`resource.getrusage`), and the 1-minute load average before and after. On a shared machine the
wall time grows with the load; the CPU seconds are the steadier figure. Nothing is downloaded
(random weights, generated inputs: the scan's cost does not depend on what the model has learned).

    python benchmarks/sensitivity_speed.py [--quick] [--size 64] [--samples 256] [--full]
        [--model resnet50|mobilenetv2] [--layers N] [--batch-size 256] [--profile N]

`--quick` scans ResNet50 at 32x32 on 64 samples; `--full` adds a row for `downstream_only=False`
(the whole model for every measurement) and says whether both scans agree exactly; `--layers N`
scans only the first N prunable layers; `--profile N` prints the N functions with the most
cumulative time (cProfile) after the table.
"""

import argparse
import cProfile
import os
import pstats
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfsparse  # noqa: E402
from tfsparse import mask_updates  # noqa: E402

TARGET_SECONDS = 180.0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    """The 1-minute load average of the machine."""
    return os.getloadavg()[0]


def build(name: str, size: int) -> keras.Model:
    """A keras.applications model with random weights, `size`x`size` RGB inputs and 10 classes."""
    keras.utils.set_random_seed(0)
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    if name == "mobilenetv2":
        return keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=10)
    raise ValueError(f"Argument `--model` must be 'resnet50' or 'mobilenetv2'. Received: {name!r}")


def prunable_layers(model: keras.Model) -> list[str]:
    """The names of `model`'s layers the scan prunes, in the scan's order."""
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=tfsparse.ConstantSparsity(0.5, 0))
    return [w.layer.name for w in mask_updates.collect_wrappers(pruned)]


def time_scan(model, data, layers, downstream_only: bool, batch_size: int, profile: int):
    """`(scan, wall seconds, CPU seconds, load before, load after)` of one scan."""
    profiler = cProfile.Profile() if profile else None
    load_before = load_average()
    wall, cpu = time.perf_counter(), cpu_seconds()
    if profiler:
        profiler.enable()
    scan = tfsparse.sensitivity_scan(
        model, data, layers=layers, batch_size=batch_size, verbose=0, downstream_only=downstream_only
    )
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(profile)
    return scan, wall, cpu, load_before, load_average()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet50 at 32x32 on 64 samples")
    parser.add_argument("--model", default="resnet50", choices=("resnet50", "mobilenetv2"))
    parser.add_argument("--size", type=int, default=None, help="input height and width (default 64)")
    parser.add_argument("--samples", type=int, default=None, help="held-out samples (default 256)")
    parser.add_argument("--layers", type=int, default=None, help="scan only the first N prunable layers")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--full", action="store_true", help="also time downstream_only=False")
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions (cProfile)")
    arguments = parser.parse_args()
    size = arguments.size or (32 if arguments.quick else 64)
    samples = arguments.samples or (64 if arguments.quick else 256)

    model = build(arguments.model, size)
    generator = np.random.default_rng(0)
    data = (
        generator.normal(size=(samples, size, size, 3)).astype("float32"),
        generator.integers(0, 10, samples),
    )
    names = prunable_layers(model)
    layers = names[: arguments.layers] if arguments.layers else None
    count = len(layers) if layers else len(names)

    rows, scans = [], []
    for downstream_only in (True, False) if arguments.full else (True,):
        scan, wall, cpu, before, after = time_scan(
            model, data, layers, downstream_only, arguments.batch_size, arguments.profile
        )
        scans.append(scan)
        measurements = sum(len(by_sparsity) for by_sparsity in scan.results.values())
        config = (
            f"{arguments.model} {size}x{size}, {samples} samples, {count} layers, "
            f"batch {arguments.batch_size}, {'downstream only' if downstream_only else 'full model'}"
        )
        rows.append((config, measurements, wall, cpu, before, after))

    header = f"{'config':<72} {'measurements':>12} {'wall s':>8} {'CPU s':>8} {'load before':>11} {'load after':>10}"
    print(f"\nsensitivity_scan time on {os.cpu_count()} CPU cores (target: {TARGET_SECONDS:.0f} s wall for")
    print("ResNet50 64x64, 256 samples, all layers, on 2 cores)")
    print(header)
    print("-" * len(header))
    for config, measurements, wall, cpu, before, after in rows:
        print(f"{config:<72} {measurements:>12} {wall:>8.1f} {cpu:>8.1f} {before:>11.2f} {after:>10.2f}")
    if len(scans) == 2:
        same = scans[0].results == scans[1].results and scans[0].baseline == scans[1].baseline
        print(f"downstream only gives the full model's results exactly: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
