"""BD-CSPN (Liu, Song and Qin 2020, "Prototype Rectification for Few-Shot Learning", ECCV): cosine nearest
prototype after two corrections of the class means.

- Cross-class bias (transductive): the query set is shifted by ``mean(support) - mean(query)`` so both sets share
  a centre.
- Intra-class bias: each class's prototype becomes a weighted mean of its members, with weights
  ``softmax(epsilon * cos(x, initial prototype))`` over the class's members. In the transductive head the members
  are the class's support items plus the (shifted) queries pseudo-labelled with that class by their nearest initial
  prototype (cosine); in the inductive head they are the class's support items only.
"""

from __future__ import annotations

import torch

from fewshot.evaluation.heads.base import Head, HeadContext, register_head
from fewshot.evaluation.heads.common import class_means, cosine, positive_float


def weighted_class_means(features: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor,
                         epsilon: float) -> torch.Tensor:
    """Each class's members averaged with weights ``softmax(epsilon * cos(member, centre of its class))`` taken over
    the class's members (the paper's intra-class rectification); ``[ways, d]``."""
    similarity = epsilon * cosine(features, centres).gather(1, labels[:, None]).squeeze(1)
    prototypes = torch.empty_like(centres)
    for way in range(len(centres)):
        members = labels == way
        weights = torch.softmax(similarity[members], dim=0)
        prototypes[way] = weights @ features[members]
    return prototypes


def rectified_prototypes(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
                         epsilon: float = 10.0, shift: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-CSPN's rectified prototypes ``[ways, d]`` and the query features it classifies (shifted by
    ``mean(support) - mean(query)`` when ``shift``, else unchanged)."""
    if shift:
        query = query + (support.mean(0) - query.mean(0))
    initial = class_means(support, support_labels, ways)
    pseudo_labels = cosine(query, initial).argmax(1)
    members = torch.cat([support, query])
    labels = torch.cat([support_labels, pseudo_labels])
    return weighted_class_means(members, labels, initial, epsilon), query


@register_head("bd-cspn")
class BDCSPN(Head):
    """Transductive BD-CSPN: queries shifted by the support-query mean difference (``shift``), prototypes rectified
    with the pseudo-labelled queries, scores ``epsilon * cos(shifted query, rectified prototype)``.

    Args:
        epsilon: the inverse temperature of the rectification weights (the paper's 10); also scales the scores.
        shift: apply the cross-class bias reduction.
    """

    transductive = True

    def __init__(self, epsilon: float = 10.0, shift: bool = True) -> None:
        self.epsilon = positive_float("bd-cspn", "epsilon", epsilon)
        self.shift = bool(shift)

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        prototypes, query = rectified_prototypes(support.float(), support_labels, query.float(), ways,
                                                 self.epsilon, self.shift)
        return self.epsilon * cosine(query, prototypes)


@register_head("bd-cspn-inductive")
class BDCSPNInductive(Head):
    """BD-CSPN's prototype rectification without the query set: each prototype is its class's support items
    weighted by ``softmax(epsilon * cos(item, class mean))`` (no pseudo-labelled queries, no shift, which both need
    the query set); scores ``epsilon * cos(query, prototype)``. With one shot it is the cosine nearest class mean.
    """

    def __init__(self, epsilon: float = 10.0) -> None:
        self.epsilon = positive_float("bd-cspn-inductive", "epsilon", epsilon)

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        support = support.float()
        prototypes = weighted_class_means(support, support_labels, class_means(support, support_labels, ways),
                                          self.epsilon)
        return self.epsilon * cosine(query.float(), prototypes)
