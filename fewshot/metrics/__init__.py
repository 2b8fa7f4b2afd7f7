"""Evaluation statistics and embedding metrics.

Three groups of pure functions:

- Episode statistics: :func:`confidence_interval` over per-episode accuracies,
  :func:`paired_comparison` of two models on identical episodes, :func:`episode_accuracy`.
- Verification (same / different class pairs): :func:`pair_scores`, :func:`roc_curve`,
  :func:`roc_auc`, :func:`equal_error_rate`, :func:`tar_at_far`, :func:`choose_threshold`,
  :func:`verification_accuracy`.
- Leave-one-out retrieval: :func:`recall_at_k`, :func:`r_precision`, :func:`map_at_r` (Musgrave,
  Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020).
- Clustering: :func:`kmeans_clusters` and :func:`clustering_scores` (NMI and AMI of k-means
  clusters against the classes; scikit-learn, imported when called).

Scores are similarities: higher means "more likely the same class", and a pair is accepted as
same-class when ``score >= threshold``. Distances follow the opposite convention (smaller is
closer); :func:`pair_scores` returns ``-distance``.
"""

from fewshot.metrics.statistics import CI_METHODS, Interval, PairedResult, as_finite_vector, confidence_interval, episode_accuracy, paired_comparison, to_numpy
from fewshot.metrics.embeddings import Distance, DistanceFn, check_embeddings, pairwise, resolve_distance
from fewshot.metrics.verification import THRESHOLD_CRITERIA, choose_threshold, equal_error_rate, pair_scores, roc_auc, roc_curve, tar_at_far, verification_accuracy
from fewshot.metrics.retrieval import map_at_r, r_precision, recall_at_k
from fewshot.metrics.clustering import ClusteringScores, clustering_scores, kmeans_clusters

__all__ = ["CI_METHODS", "ClusteringScores", "Distance", "DistanceFn", "Interval", "PairedResult", "THRESHOLD_CRITERIA", "as_finite_vector", "check_embeddings", "choose_threshold", "clustering_scores", "confidence_interval", "episode_accuracy", "equal_error_rate", "kmeans_clusters", "map_at_r", "pair_scores", "paired_comparison", "pairwise", "r_precision", "recall_at_k", "resolve_distance", "roc_auc", "roc_curve", "tar_at_far", "to_numpy", "verification_accuracy"]
