"""Prototypical Networks (Snell et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.distances import SquaredEuclidean
from fewshot.learners.base import (
    LearnerOutput,
    check_query_labels,
    episode_ways,
    prototype_logits,
    prototypes,
)

__all__ = ["PrototypicalLearner", "prototypes", "prototype_logits"]


class PrototypicalLearner(nn.Module):
    """Cross-entropy of ``-distance(query, class means of the support)``.

    The distance may be learnable (cosine scale, Mahalanobis ``L``): it is a submodule, so
    ``learner.parameters()`` holds its parameters.
    """

    def __init__(self, distance: nn.Module | None = None) -> None:
        super().__init__()
        self.distance = distance if distance is not None else SquaredEuclidean()

    def forward(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        query_labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> LearnerOutput:
        ways = episode_ways(support_labels)
        check_query_labels(query_labels, query, ways)
        logits = prototype_logits(self.distance, support, support_labels, query, ways)
        return LearnerOutput(loss=F.cross_entropy(logits, query_labels), logits=logits)
