"""The learner's own test-time rule as a head: nearest prototype under its scoring distance (Snell et al. 2017), or
a learner's own rule where it has one. The default head, and the reference of every paired comparison."""

from __future__ import annotations

import torch

from fewshot.evaluation.heads.base import Head, HeadContext, register_head


@register_head("prototype")
class PrototypeHead(Head):
    """Today's rule, unchanged: ``context.learner.episode_logits`` (nearest class mean under the learner's scoring
    distance for every learner without a rule of its own)."""

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        return context.learner.episode_logits(support, support_labels, query, ways)
