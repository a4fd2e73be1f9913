"""tfsparse: pruning and sparsity for Keras 3 models."""

from tfsparse import analysis, criteria, export, regularizers, structured
from tfsparse.callbacks import PruningSummaries, UpdatePruningStep
from tfsparse.finetune import finetune, prune_and_finetune
from tfsparse.oneshot import prune_by_threshold, prune_oneshot
from tfsparse.prune import prune_low_magnitude, strip_pruning
from tfsparse.registry import PrunableLayer
from tfsparse.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from tfsparse.wrapper import PruneLowMagnitude

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneLowMagnitude",
    "PruningSchedule",
    "PruningSummaries",
    "UpdatePruningStep",
    "analysis",
    "criteria",
    "export",
    "finetune",
    "prune_and_finetune",
    "prune_by_threshold",
    "prune_low_magnitude",
    "prune_oneshot",
    "regularizers",
    "strip_pruning",
    "structured",
]
