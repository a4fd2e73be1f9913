"""Quantization-aware training (int8, as TFLite runs it) that keeps a pruned model's zeros."""

from tfsparse.quantization.activation import QuantizeActivation
from tfsparse.quantization.calibrate import calibrate_logits_range
from tfsparse.quantization.folding import batch_norm_folds, fold_batch_norms
from tfsparse.quantization.quantize import is_quantize_aware, quantize_aware
from tfsparse.quantization.wrapper import QuantizeWrapper

__all__ = [
    "QuantizeActivation",
    "QuantizeWrapper",
    "batch_norm_folds",
    "calibrate_logits_range",
    "fold_batch_norms",
    "is_quantize_aware",
    "quantize_aware",
]
