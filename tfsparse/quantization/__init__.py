"""Quantization-aware training (int8, as TFLite runs it) that keeps a pruned model's zeros."""

from tfsparse.quantization.activation import QuantizeActivation
from tfsparse.quantization.calibrate import calibrate_logits_range
from tfsparse.quantization.quantize import is_quantize_aware, quantize_aware
from tfsparse.quantization.wrapper import QuantizeWrapper

__all__ = [
    "QuantizeActivation",
    "QuantizeWrapper",
    "calibrate_logits_range",
    "is_quantize_aware",
    "quantize_aware",
]
