"""Clustering embeddings in a model's metric: k-means (scikit-learn) or agglomerative (scipy's hierarchy), with
the number of clusters estimated by the silhouette when it is not given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fewshot.distances import metric_space

CLUSTER_METHODS = ("kmeans", "agglomerative")
#: Largest number of clusters tried when estimating it (pass max_clusters for more).
DEFAULT_MAX_CLUSTERS = 50
#: Items the silhouette is computed on (seeded sample beyond it): it costs n^2 distances.
SILHOUETTE_SAMPLE = 5000


@dataclass
class Clustering:
    """A cluster id per item (0..n_clusters-1), the silhouette of that clustering, and, when the number was
    estimated, the silhouette of every number tried (`candidates`)."""

    labels: np.ndarray
    n_clusters: int
    method: str
    silhouette: float | None
    estimated: bool
    candidates: dict[int, float] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)

    def members(self, cluster: int) -> list[str]:
        """The items of one cluster."""
        return [item for item, label in zip(self.items, self.labels) if label == cluster]


def _coordinates(embeddings: Tensor, distance: Callable[[Tensor, Tensor], Tensor]) -> np.ndarray | None:
    """Points whose Euclidean geometry orders pairs as `distance` does (None for a distance with no such form)."""
    space = metric_space(distance)
    if space is None:
        return None
    with torch.no_grad():
        return space.transform(embeddings).double().cpu().numpy()


def cluster_embeddings(embeddings: Tensor, distance: Callable[[Tensor, Tensor], Tensor], n_clusters: int | None = None,
                       *, method: str = "kmeans", max_clusters: int | None = None, seed: int = 0) -> Clustering:
    """Cluster embeddings [n, d] under `distance` (a model's scoring distance).

    k-means runs on the metric's coordinates (the Mahalanobis transform, unit vectors for cosine), so its
    squared-Euclidean objective is the model's metric; agglomerative is Ward linkage on those coordinates, or
    average linkage on the model's own distances for a distance with no coordinates. Without `n_clusters`,
    every number in 2..`max_clusters` (default min(n - 1, 50)) is tried and the best silhouette wins.
    """
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import squareform
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    if method not in CLUSTER_METHODS:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {', '.join(CLUSTER_METHODS)}")
    n = len(embeddings)
    if n < 2:
        raise ValueError(f"clustering needs at least 2 images, got {n}")
    if n_clusters is not None and (isinstance(n_clusters, bool) or not isinstance(n_clusters, int)
                                   or not 1 <= n_clusters <= n):
        raise ValueError(f"n_clusters must be an int in [1, {n}] for {n} images, got {n_clusters!r}")
    coordinates = _coordinates(embeddings, distance)
    matrix = None
    if coordinates is None:
        if method == "kmeans":
            raise ValueError(f"k-means needs a Euclidean, Mahalanobis or cosine distance; this model's is "
                             f"{distance!r}: use method='agglomerative'")
        with torch.no_grad():
            matrix = distance(embeddings, embeddings).double().cpu().numpy()
        matrix = np.maximum((matrix + matrix.T) / 2, 0.0)  # symmetric and non-negative, as linkage needs
        np.fill_diagonal(matrix, 0.0)
    tree = None
    if method == "agglomerative":
        tree = (linkage(coordinates, method="ward") if matrix is None
                else linkage(squareform(matrix, checks=False), method="average"))

    def fit(k: int) -> np.ndarray:
        if method == "kmeans":
            return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(coordinates).astype(np.int64)
        return cut_tree(tree, n_clusters=k).ravel().astype(np.int64)

    rng_state = int(seed)
    sample = SILHOUETTE_SAMPLE if n > SILHOUETTE_SAMPLE else None

    def silhouette(labels: np.ndarray) -> float | None:
        if not 2 <= len(np.unique(labels)) <= n - 1:
            return None
        if matrix is None:
            return float(silhouette_score(coordinates, labels, sample_size=sample, random_state=rng_state))
        return float(silhouette_score(matrix, labels, metric="precomputed", sample_size=sample, random_state=rng_state))

    if n_clusters is not None:
        labels = fit(n_clusters)
        return Clustering(labels, n_clusters, method, silhouette(labels), estimated=False)
    top = min(n - 1, DEFAULT_MAX_CLUSTERS if max_clusters is None else max_clusters)
    if top < 2:
        raise ValueError(f"estimating the number of clusters needs at least 3 images (2..n-1 clusters), got {n}; "
                         "pass n_clusters")
    candidates: dict[int, float] = {}
    best_labels, best_k = None, None
    for k in range(2, top + 1):
        labels = fit(k)
        score = silhouette(labels)
        if score is None:
            continue
        candidates[k] = score
        if best_k is None or score > candidates[best_k]:
            best_labels, best_k = labels, k
    if best_k is None:
        raise ValueError(f"no number of clusters in 2..{top} gave distinct clusters (are the images identical?)")
    return Clustering(best_labels, best_k, method, candidates[best_k], estimated=True, candidates=candidates)
