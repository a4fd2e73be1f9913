"""Weight clustering (weight sharing): kernels that hold at most k distinct values, zeros kept."""

from tfsparse.clustering.callbacks import UpdateClusterAssignments
from tfsparse.clustering.cluster import cluster_weights, strip_clustering
from tfsparse.clustering.wrapper import ClusterWeights

__all__ = ["ClusterWeights", "UpdateClusterAssignments", "cluster_weights", "strip_clustering"]
