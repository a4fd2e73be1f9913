"""tfsparse: pruning and sparsity for Keras 3 models."""

from tfsparse import analysis, clustering, criteria, export, lowrank, quantization, regularizers, structured
from tfsparse.allocation import auto_sparsity
from tfsparse.callbacks import PruningSummaries, UpdatePruningStep
from tfsparse.distill import Distiller
from tfsparse.finetune import finetune, prune_and_finetune
from tfsparse.oneshot import prune_by_threshold, prune_oneshot
from tfsparse.prune import prune_low_magnitude, strip_pruning
from tfsparse.registry import PrunableLayer
from tfsparse.regrowth import Regrowth
from tfsparse.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from tfsparse.sensitivity import SensitivityScan, sensitivity_scan
from tfsparse.wrapper import PruneLowMagnitude

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "Distiller",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneLowMagnitude",
    "PruningSchedule",
    "PruningSummaries",
    "Regrowth",
    "UpdatePruningStep",
    "SensitivityScan",
    "analysis",
    "auto_sparsity",
    "clustering",
    "criteria",
    "export",
    "finetune",
    "lowrank",
    "prune_and_finetune",
    "prune_by_threshold",
    "prune_low_magnitude",
    "prune_oneshot",
    "quantization",
    "regularizers",
    "sensitivity_scan",
    "strip_pruning",
    "structured",
]
