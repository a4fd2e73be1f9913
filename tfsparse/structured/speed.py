"""Whether a pruned model's measured speedup matches its FLOP reduction, and a warning when not.

Fewer FLOPs do not always mean lower latency: small layers are dominated by framework overhead,
odd channel counts miss vectorized kernels, and memory traffic does not shrink with arithmetic.
`check_speedup` measures both models on this machine and warns when the speedup is less than half
of the FLOP reduction, so that a user learns it before deploying.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras

from tfsparse.analysis.flops import count_flops
from tfsparse.analysis.latency import RUNTIMES, measure_latencies


@dataclasses.dataclass(frozen=True)
class SpeedupReport:
    """FLOPs and measured latency of a pruned model beside its original.

    Attributes:
        flops: FLOPs per example of the original and of the pruned model.
        latency_ms: median latency of one batch of the original and of the pruned model.
        runtime: "keras" or "litert".
        batch_size: samples per measured call.
    """

    flops: tuple[int, int]
    latency_ms: tuple[float, float]
    runtime: str
    batch_size: int

    @property
    def flop_reduction(self) -> float:
        """Original FLOPs over pruned FLOPs (2.0: half the arithmetic)."""
        return self.flops[0] / max(self.flops[1], 1)

    @property
    def speedup(self) -> float:
        """Original latency over pruned latency (2.0: twice as fast)."""
        return self.latency_ms[0] / max(self.latency_ms[1], 1e-9)

    @property
    def falls_short(self) -> bool:
        """Whether the measured speedup is less than half of the FLOP reduction."""
        return self.speedup < 0.5 * self.flop_reduction

    def __str__(self) -> str:
        return (
            f"FLOPs cut {self.flop_reduction:.2f}x ({self.flops[0]:,} -> {self.flops[1]:,}); measured speedup "
            f"{self.speedup:.2f}x ({self.latency_ms[0]:.3f} -> {self.latency_ms[1]:.3f} ms, {self.runtime}, "
            f"batch {self.batch_size})"
        )


def check_speedup(
    original: keras.Model,
    pruned: keras.Model,
    runtime: str = "keras",
    batch_size: int = 1,
    repeats: int = 10,
    warn: bool = True,
) -> SpeedupReport:
    """Measures the pruned model's speedup and FLOP reduction; warns when the speedup falls short.

    "Falls short" means the speedup is less than half the FLOP reduction: with FLOPs cut 4x, a
    speedup under 2x warns.

    Args:
        original: the model before pruning.
        pruned: the model after pruning (same inputs).
        runtime: where to measure, "keras" or "litert" (see `tfsparse.analysis.measure_latency`).
        batch_size: samples per measured call.
        repeats: timed calls per model (the median counts), in two interleaved rounds.
        warn: emit a `UserWarning` when the speedup falls short.

    Returns:
        A `SpeedupReport`.

    Example:

    ```python
    small = tfsparse.structured.prune(model, ratio=0.5)
    print(check_speedup(model, small, runtime="litert"))
    ```
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"Argument `runtime` must be one of {RUNTIMES}. Received: runtime={runtime!r}")
    report = SpeedupReport(
        flops=(count_flops(original), count_flops(pruned)),
        latency_ms=tuple(
            measure_latencies([original, pruned], runtime, batch_size, repeats=repeats, rounds=2)
        ),
        runtime=runtime,
        batch_size=batch_size,
    )
    if warn and report.falls_short:
        warnings.warn(
            f"Structured pruning of '{original.name}': {report}, less than half the FLOP reduction. Latency "
            "here is dominated by something the pruning did not shrink (framework overhead on small "
            "layers, memory traffic, channel counts that miss vectorized kernels). Try round_to=8, a "
            "larger batch, runtime='litert', or pruning the layers that dominate latency.",
            stacklevel=2,
        )
    return report
