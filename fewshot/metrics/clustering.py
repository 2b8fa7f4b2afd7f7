"""Clustering quality: :func:`kmeans_clusters` and :func:`clustering_scores` (NMI and AMI of k-means
clusters against the classes; scikit-learn, imported when called)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor

from fewshot.metrics.statistics import to_numpy


@dataclass(frozen=True)
class ClusteringScores:
    """Agreement of a clustering with the classes: normalised and adjusted mutual information."""

    nmi: float
    """Normalised mutual information, ``I(Y; C) / ((H(Y) + H(C)) / 2)``: 1 for the classes
    themselves (up to renaming), 0 for a clustering independent of them."""
    ami: float
    """Adjusted mutual information: NMI corrected for chance, ``(I - E[I]) / (mean(H) - E[I])``,
    about 0 for a random clustering with the same cluster sizes, 1 for the classes."""
    clusters: int
    """Number of distinct clusters."""


def _check_assignments(values: ArrayLike | Tensor, name: str) -> np.ndarray:
    array = to_numpy(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}")
    return array.astype(np.int64)


def clustering_scores(labels: ArrayLike | Tensor, clusters: ArrayLike | Tensor) -> ClusteringScores:
    """NMI and AMI of cluster ids ``clusters`` against class ids ``labels`` (one of each per item).

    NMI uses the arithmetic mean of the two entropies (scikit-learn's default, and the NMI of
    the deep metric learning literature); AMI uses the same mean and the expected mutual
    information under random clusterings of the same sizes. Both are symmetric and ignore how
    clusters and classes are numbered.
    """
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    label_array = _check_assignments(labels, "labels")
    cluster_array = _check_assignments(clusters, "clusters")
    if label_array.shape != cluster_array.shape:
        raise ValueError(
            f"labels and clusters need one entry per item, got {label_array.size} labels and "
            f"{cluster_array.size} clusters"
        )
    return ClusteringScores(
        nmi=float(normalized_mutual_info_score(label_array, cluster_array)),
        ami=float(adjusted_mutual_info_score(label_array, cluster_array)),
        clusters=int(np.unique(cluster_array).size),
    )


def kmeans_clusters(
    embeddings: Tensor | ArrayLike, k: int, *, seed: int = 0, normalize: bool = False
) -> np.ndarray:
    """Cluster ids ``[n]`` of Euclidean k-means on the embeddings ``[n, d]`` (scikit-learn's
    ``KMeans``: k-means++ initialisation, one run, seeded), so the same embeddings and seed give
    the same clusters. ``normalize`` L2-normalises the rows first, the consistent choice for
    embeddings compared by cosine (Euclidean distance between unit vectors is monotone in it).
    """
    from sklearn.cluster import KMeans

    array = torch.as_tensor(embeddings).detach().cpu().double()
    if array.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {tuple(array.shape)}")
    if not torch.isfinite(array).all():
        raise ValueError("embeddings contain non-finite values (NaN or inf)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= array.shape[0]:
        raise ValueError(f"k must be an int in [1, {array.shape[0]}] for {array.shape[0]} embeddings, got {k!r}")
    if normalize:
        array = F.normalize(array, dim=1)
    # One k-means++ start: each start is a full k-means run (with k in the thousands for Omniglot's
    # test classes, ten starts would cost ten times as long), and the seed makes the one start repeatable.
    model = KMeans(n_clusters=int(k), n_init=1, random_state=seed)
    return model.fit_predict(array.numpy()).astype(np.int64)
