"""tfsparse: pruning and sparsity for Keras 3 models."""

from tfsparse.callbacks import PruningSummaries, UpdatePruningStep
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
    "prune_low_magnitude",
    "strip_pruning",
]
