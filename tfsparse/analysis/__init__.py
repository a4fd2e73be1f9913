"""What a model holds and costs: per-weight sparsity, parameter counts and FLOPs.

Pure functions over a model's layers: they read weights and the shapes recorded in the model's graph,
and work on pruned (wrapped), stripped and plain models alike, nested models included. Pruned
layers are reported by their inner layer's name with their masked weights, so the report of a pruned
model and of its stripped copy match row for row.
"""

from tfsparse.analysis.flops import count_flops, flops_by_layer
from tfsparse.analysis.html import html_report
from tfsparse.analysis.latency import measure_latencies, measure_latency
from tfsparse.analysis.report import (
    ParameterCount,
    SparsityReport,
    Totals,
    WeightSparsity,
    count_parameters,
    sparsity_report,
)
from tfsparse.analysis.tflite_report import tflite_sparsity_report

__all__ = [
    "ParameterCount",
    "SparsityReport",
    "Totals",
    "WeightSparsity",
    "count_flops",
    "count_parameters",
    "flops_by_layer",
    "html_report",
    "measure_latencies",
    "measure_latency",
    "sparsity_report",
    "tflite_sparsity_report",
]
