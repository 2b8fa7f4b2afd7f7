"""Lifted structured embedding loss (Oh Song et al., 2016, "Deep Metric Learning via Lifted Structured
Feature Embedding")."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.learners.base import SQUARED_METRICS, EpisodeEmbeddings, Learner, SquareRoot, metric_distances, register_learner
from fewshot.learners.proxies import check_positive, pair_masks


def lifted_structure_loss(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """``1/(2|P|) sum_{(i,j) in P} max(0, J_ij)^2`` with ``J_ij = log(sum_{k in N_i} exp(margin - D_ik)
    + sum_{l in N_j} exp(margin - D_jl)) + D_ij`` (equation 4 of the paper) over the unordered positive
    pairs ``P`` of the metric distances ``dist [n, n]``; ``N_i`` are the negatives of ``i``. Without a
    positive or a negative pair the loss is 0 (and still backpropagates)."""
    positive, negative = pair_masks(labels)
    positive = positive.triu(diagonal=1)
    if not positive.any() or not negative.any():
        return dist.sum() * 0.0
    # Every embedding has a negative once the batch has two classes, so no row of this is empty.
    soft_negative = torch.logsumexp((margin - dist).masked_fill(~negative, float("-inf")), dim=1)
    i, j = positive.nonzero(as_tuple=True)
    objective = torch.logaddexp(soft_negative[i], soft_negative[j]) + dist[i, j]
    return objective.clamp_min(0.0).pow(2).sum() / (2 * len(i))


@register_learner("lifted-structure")
class LiftedStructureLearner(Learner):
    """Lifted structure loss over all pairs of an episode's embeddings (support and query together).

    Like the triplet loss it is defined on a metric, the square root of a squared one (Euclidean by
    default, or a learned Mahalanobis), on L2-normalised embeddings by default; ``margin`` (``alpha``
    in the paper) is 1. Equals pytorch-metric-learning's ``LiftedStructureLoss(neg_margin=margin,
    pos_margin=0)`` on unit embeddings.
    """

    normalize = True
    distances = SQUARED_METRICS
    needs_queries = False  # all of the batch's pairs: episodes or class-balanced batches
    min_class_images = 2  # the loss sums over positive pairs: 0 without one

    def __init__(self, distance: nn.Module | None = None, margin: float = 1.0) -> None:
        super().__init__(distance)
        self.margin = check_positive("margin", margin, "the lifted structure loss")

    @property
    def scoring_distance(self) -> SquareRoot:
        # Nearest-prototype logits under the metric the margin is set in, not its square.
        return SquareRoot(self.distance)

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings = batch.embeddings
        return lifted_structure_loss(metric_distances(self.distance, embeddings, embeddings), batch.labels, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
