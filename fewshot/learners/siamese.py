"""Siamese network trained with the contrastive loss (Hadsell, Chopra & LeCun, 2006)."""

from __future__ import annotations

import torch

from fewshot.distances import squared_euclidean
from fewshot.learners.base import PooledLearner


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Balanced contrastive loss over all pairs ``i < j`` of ``embeddings [n, d]``.

    ``0.5 * mean_pos d^2 + 0.5 * mean_neg max(0, margin - d)^2`` with ``d`` the Euclidean distance:
    each pair type is averaged separately, since an episode has far more negative pairs than
    positive ones (a 5-way episode: about 4x). A pair type absent from the batch contributes 0.
    """
    squared = squared_euclidean(embeddings, embeddings)
    distance = squared.clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(diagonal=1)
    positive, negative = same & upper, ~same & upper
    loss = embeddings.new_zeros(())
    if positive.any():
        loss = loss + 0.5 * squared[positive].mean()
    if negative.any():
        loss = loss + 0.5 * (margin - distance[negative]).clamp_min(0.0).pow(2).mean()
    return loss


class SiameseLearner(PooledLearner):
    """Contrastive loss over the pairs of an episode's embeddings (support and query together).

    Logits are nearest-prototype logits under the Euclidean distance the loss trains.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin

    def pooled_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return contrastive_loss(embeddings, labels, self.margin)
