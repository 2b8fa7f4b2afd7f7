"""PT-MAP (Hu, Gripon and Pateux 2021, "Leveraging the Feature Distribution in Transfer-based Few-Shot Learning",
ICANN): a power transform that makes the embeddings closer to Gaussian, then a MAP estimate of the class centres in
which the queries' soft assignments are an optimal transport plan (Sinkhorn) with equal mass per class."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.evaluation.heads.base import Head, HeadContext, register_head
from fewshot.evaluation.heads.common import class_means, positive_float, positive_int


def power_transform(features: torch.Tensor, power: float) -> torch.Tensor:
    """``(max(x, 0) + 1e-6) ** power`` elementwise: the paper's transform of non-negative (post-ReLU) features;
    negative values, which it does not expect, are clipped to zero (as easyfsl does)."""
    return (features.clamp_min(0) + 1e-6).pow(power)


def sinkhorn(cost: torch.Tensor, lam: float, column_mass: float, tolerance: float, iterations: int) -> torch.Tensor:
    """The transport plan ``[n, ways]`` of ``exp(-lam * cost)`` scaled to unit row sums and ``column_mass`` per
    column (Sinkhorn-Knopp), stopped when the row sums move by less than ``tolerance`` or after ``iterations``."""
    plan = torch.exp(-lam * cost)
    plan = plan / plan.sum()
    for _ in range(iterations):
        row_sums = plan.sum(1)
        plan = plan * (1 / (row_sums + 1e-10))[:, None]
        plan = plan * (column_mass / (plan.sum(0) + 1e-10))[None, :]
        if float((row_sums - plan.sum(1)).abs().max()) < tolerance:
            break
    return plan


@register_head("pt-map")
class PTMAP(Head):
    """PT-MAP with the paper's settings: power transform (``power`` 0.5), then (``normalize``) L2-normalise, centre on
    the episode's mean (support and queries) and L2-normalise again; centres start at the support class means and
    take ``steps`` (20) MAP steps ``centre += alpha * (assignment-weighted mean - centre)`` (``alpha`` 0.2), where
    the support items count with their labels and the queries with the Sinkhorn plan of their squared distances
    (``lam`` 10, ``n_query / ways`` mass per class: it assumes balanced queries). Scores are the log of the final plan.
    """

    transductive = True

    def __init__(self, power: float = 0.5, lam: float = 10.0, alpha: float = 0.2, steps: int = 20,
                 normalize: bool = True, sinkhorn_tolerance: float = 1e-6, sinkhorn_iterations: int = 1000) -> None:
        self.power = positive_float("pt-map", "power", power)
        self.lam = positive_float("pt-map", "lam", lam)
        self.alpha = positive_float("pt-map", "alpha", alpha)
        if self.alpha > 1:
            raise ValueError(f"pt-map: alpha is a step size in (0, 1], got {alpha!r}")
        self.steps = positive_int("pt-map", "steps", steps, minimum=0)
        self.normalize = bool(normalize)
        self.sinkhorn_tolerance = positive_float("pt-map", "sinkhorn_tolerance", sinkhorn_tolerance)
        self.sinkhorn_iterations = positive_int("pt-map", "sinkhorn_iterations", sinkhorn_iterations)

    def features(self, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed support and query features."""
        features = power_transform(torch.cat([support.float(), query.float()]), self.power)
        if self.normalize:
            features = F.normalize(features, dim=1)
            features = F.normalize(features - features.mean(0), dim=1)
        return features[:len(support)], features[len(support):]

    def assignments(self, query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """The queries' soft assignments ``[n_query, ways]`` to ``centres``."""
        return sinkhorn(torch.cdist(query, centres) ** 2, self.lam, len(query) / len(centres),
                        self.sinkhorn_tolerance, self.sinkhorn_iterations)

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        support, query = self.features(support, query)
        centres = class_means(support, support_labels, ways)
        support_assignments = F.one_hot(support_labels, ways).to(support.dtype)
        features = torch.cat([support, query])
        for _ in range(self.steps):
            weights = torch.cat([support_assignments, self.assignments(query, centres)])
            estimates = (weights.T @ features) / weights.sum(0)[:, None]
            centres = centres + self.alpha * (estimates - centres)
        plan = self.assignments(query, centres)
        return torch.log(plan / plan.sum(1, keepdim=True) + 1e-12)
