"""Siamese network trained with the contrastive loss (Hadsell, Chopra & LeCun, 2006)."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.distances import SquaredEuclidean
from fewshot.learners.base import EpisodeEmbeddings, MarginLearner, metric_distances, register_learner


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float,
                     distance: nn.Module | None = None) -> torch.Tensor:
    """Balanced contrastive loss over all pairs ``i < j`` of ``embeddings [n, d]``.

    ``0.5 * mean_pos d^2 + 0.5 * mean_neg max(0, margin - d)^2`` with ``d`` the metric whose square
    `distance` computes (default: Euclidean): each pair type is averaged separately, since an episode
    has far more negative pairs than positive ones (a 5-way episode: about 4x). A pair type absent
    from the batch contributes 0.
    """
    squared = (distance or SquaredEuclidean())(embeddings, embeddings)
    distance_matrix = squared.clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(diagonal=1)
    positive, negative = same & upper, ~same & upper
    loss = embeddings.new_zeros(())
    if positive.any():
        loss = loss + 0.5 * squared[positive].mean()
    if negative.any():
        loss = loss + 0.5 * (margin - distance_matrix[negative]).clamp_min(0.0).pow(2).mean()
    return loss


@register_learner("siamese")
class SiameseLearner(MarginLearner):
    """Contrastive loss over the pairs of an episode's embeddings (support and query together).

    Defined on a metric: the Euclidean distance (default) or a learned Mahalanobis one.
    """

    def __init__(self, distance: nn.Module | None = None, margin: float = 1.0) -> None:
        super().__init__(distance)
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        return contrastive_loss(batch.embeddings, batch.labels, self.margin, self.distance)


__all__ = ["SiameseLearner", "contrastive_loss", "metric_distances"]
