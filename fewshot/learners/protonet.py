"""Prototypical Networks (Snell et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.learners.base import EpisodeEmbeddings, Learner, prototype_logits, prototypes, register_learner

__all__ = ["PrototypicalLearner", "prototypes", "prototype_logits"]


@register_learner("protonet")
class PrototypicalLearner(Learner):
    """Cross-entropy of ``-distance(query, class means of the support)``.

    Any registered distance works; a learnable one (cosine scale, Mahalanobis ``L``) is a submodule,
    so ``learner.parameters()`` holds its parameters.
    """

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        return F.cross_entropy(batch.logits, batch.query_labels)
