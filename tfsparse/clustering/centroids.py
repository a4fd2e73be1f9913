"""Where a weight's clusters start and which cluster each value belongs to: numpy in, numpy out."""

from __future__ import annotations

import numpy as np

INITS = ("kmeans++", "linear", "density")

# Lloyd iterations after k-means++ seeding; 1-D k-means settles in a few.
_KMEANS_ITERATIONS = 10


def _linear(values: np.ndarray, k: int) -> np.ndarray:
    return np.linspace(values.min(), values.max(), k)


def _density(values: np.ndarray, k: int) -> np.ndarray:
    # Evenly spaced in the cumulative distribution: more centroids where weights are dense.
    return np.quantile(values, (np.arange(k) + 0.5) / k)


def _kmeans_plus_plus(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centroids = [values[rng.integers(len(values))]]
    for _ in range(1, k):
        distance = np.min((values[:, None] - np.asarray(centroids)[None, :]) ** 2, axis=1)
        total = distance.sum()
        if total == 0:  # fewer distinct values than clusters
            centroids.append(values[rng.integers(len(values))])
            continue
        centroids.append(values[rng.choice(len(values), p=distance / total)])
    centroids = np.sort(np.asarray(centroids, dtype="float64"))
    for _ in range(_KMEANS_ITERATIONS):
        labels = nearest(values, centroids)
        sums = np.bincount(labels, weights=values, minlength=k)
        counts = np.bincount(labels, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return np.sort(centroids)


def initial_centroids(values: np.ndarray, k: int, init: str, seed: int = 0) -> np.ndarray:
    """`k` starting centroids for the 1-D `values`, sorted.

    Args:
        values: the weight values to cluster (1-D; pruned zeros left out by the caller).
        k: number of clusters.
        init: "kmeans++" (k-means++ seeding, then Lloyd iterations), "linear" (evenly spaced from
            min to max) or "density" (evenly spaced in the values' cumulative distribution).
        seed: seeds k-means++.

    Returns:
        A float32 array of `k` centroids (all 0 for empty `values`).

    Example:

    ```python
    centroids = initial_centroids(kernel.ravel(), 16, "linear")
    ```
    """
    values = np.asarray(values, dtype="float64").ravel()
    if values.size == 0:
        return np.zeros(k, dtype="float32")
    if init == "linear":
        centroids = _linear(values, k)
    elif init == "density":
        centroids = _density(values, k)
    else:
        centroids = _kmeans_plus_plus(values, k, seed)
    return centroids.astype("float32")


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest centroid for each value (same shape as `values`), int32.

    Args:
        values: any array of weight values.
        centroids: 1-D array of centroids.

    Returns:
        An int32 array of indices into `centroids`.

    Example:

    ```python
    assignments = nearest(kernel, centroids)
    ```
    """
    values = np.asarray(values)
    distance = np.abs(values.reshape(-1, 1) - np.asarray(centroids).reshape(1, -1))
    return distance.argmin(axis=1).astype("int32").reshape(values.shape)
