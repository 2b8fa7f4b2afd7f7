"""Triplet loss with online mining (Schroff et al., 2015; Hermans et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, MarginLearner, metric_distances, register_learner
from fewshot.learners.miners import Miner, build_miner

REDUCTIONS = ("mean", "mean-nonzero")


@register_learner("triplet")
class TripletLearner(MarginLearner):
    """``max(0, d(a, p) - d(a, n) + margin)`` over triplets mined from the episode's embeddings.

    ``d`` is a metric (not squared): the Euclidean distance by default, or a learned Mahalanobis one;
    support and query embeddings are mined together. ``reduction="mean"`` averages over all mined
    triplets (so the value falls as triplets become easy); ``"mean-nonzero"`` averages over the
    triplets with a positive loss (Hermans et al.'s advice for batch-all). With no triplet (or none
    active) the loss is 0. With the semi-hard miner every mined triplet has a loss in (0, margin) by
    construction, so the loss stays near margin/2 while training improves: watch the accuracy instead.
    ``miner`` is a name registered in ``fewshot.learners.miners.MINERS`` or a ``Miner``; ``margin`` is passed to the
    semi-hard miner.
    """

    def __init__(self, distance: nn.Module | None = None, margin: float = 0.2, miner: str | Miner = "semi-hard",
                 reduction: str = "mean") -> None:
        super().__init__(distance)
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
        if isinstance(miner, str):
            miner = build_miner(miner, margin=margin) if miner == "semi-hard" else build_miner(miner)
        self.margin = margin
        self.miner = miner
        self.reduction = reduction

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings = batch.embeddings
        dist = metric_distances(self.distance, embeddings, embeddings)
        anchor, positive, negative = self.miner(dist, batch.labels, generator, embedding_dim=embeddings.shape[1])
        losses = (dist[anchor, positive] - dist[anchor, negative] + self.margin).clamp_min(0.0)
        if self.reduction == "mean-nonzero":
            losses = losses[losses > 0]
        # A zero that still depends on the embeddings keeps backward() valid on an empty batch.
        return losses.mean() if len(losses) else dist.sum() * 0.0
