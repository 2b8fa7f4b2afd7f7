"""LaplacianShot (Ziko, Dolz, Granger and Ben Ayed 2020, "Laplacian Regularized Few-Shot Learning", ICML): soft
assignments of the queries that trade the distance to each prototype against agreement with their nearest
neighbours among the queries (a Laplacian term over a kNN graph), minimised by bound updates."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.evaluation.heads.base import Head, HeadContext, register_head
from fewshot.evaluation.heads.bd_cspn import rectified_prototypes
from fewshot.evaluation.heads.common import class_means, positive_float, positive_int


def knn_affinity(features: torch.Tensor, knn: int) -> torch.Tensor:
    """``W[i, j] = 1`` when ``j`` is among the ``knn - 1`` nearest other rows of row ``i`` (Euclidean; ``knn``
    counts the row itself, as the paper's code does), else 0; ``[n, n]``, not symmetrised."""
    k = min(knn, len(features))
    neighbours = torch.cdist(features, features).topk(k, largest=False).indices[:, 1:]
    affinity = torch.zeros(len(features), len(features), dtype=features.dtype, device=features.device)
    return affinity.scatter_(1, neighbours, 1.0)


def bound_updates(unary: torch.Tensor, affinity: torch.Tensor, lam: float, iterations: int) -> torch.Tensor:
    """The paper's Algorithm 1: ``Y = softmax(-unary + lam * W Y)`` repeated until the bound
    ``sum(Y log Y + unary Y - lam (W Y) Y)`` changes by at most 1e-6 of itself (after the third update) or for
    ``iterations`` updates; returns the last pre-softmax scores ``[n, ways]`` (their softmax is ``Y``)."""
    assignments = torch.softmax(-unary, dim=1)
    scores = -unary
    previous = float("inf")
    for step in range(iterations):
        scores = -unary + lam * (affinity @ assignments)
        assignments = torch.softmax(scores, dim=1)
        pairwise = affinity @ assignments
        bound = float((assignments * torch.log(assignments + 1e-12) + unary * assignments
                       - lam * pairwise * assignments).sum())
        if step > 1 and abs(bound - previous) <= 1e-6 * abs(previous):
            break
        previous = bound
    return scores


@register_head("laplacianshot")
class LaplacianShot(Head):
    """LaplacianShot on L2-normalised embeddings (``normalize``): unary terms are squared Euclidean distances of
    the queries to the prototypes, BD-CSPN-rectified (``rectify``, the paper code's default, with ``epsilon``) or
    plain class means; pairwise terms a ``knn``-nearest-neighbour graph of the queries weighted by ``lam``.
    Scores are the final soft assignments' log-odds.

    Args:
        knn: neighbours in the affinity graph, counting the query itself (3: two others).
        lam: weight of the Laplacian term (0.7).
        iterations: most bound updates (20).
        rectify: start from BD-CSPN's rectified prototypes instead of the class means.
        epsilon: BD-CSPN's rectification temperature (10).
        normalize: L2-normalise the embeddings first.
    """

    transductive = True

    def __init__(self, knn: int = 3, lam: float = 0.7, iterations: int = 20, rectify: bool = True,
                 epsilon: float = 10.0, normalize: bool = True) -> None:
        self.knn = positive_int("laplacianshot", "knn", knn)
        self.lam = positive_float("laplacianshot", "lam", lam, allow_zero=True)
        self.iterations = positive_int("laplacianshot", "iterations", iterations)
        self.rectify = bool(rectify)
        self.epsilon = positive_float("laplacianshot", "epsilon", epsilon)
        self.normalize = bool(normalize)

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        support, query = support.float(), query.float()
        if self.normalize:
            support, query = F.normalize(support, dim=1), F.normalize(query, dim=1)
        if self.rectify:
            prototypes, _ = rectified_prototypes(support, support_labels, query, ways, self.epsilon)
        else:
            prototypes = class_means(support, support_labels, ways)
        unary = torch.cdist(query, prototypes) ** 2
        return bound_updates(unary, knn_affinity(query, self.knn), self.lam, self.iterations)
