"""Circle loss, in its pair-based and class-level forms (Sun et al., 2020, "Circle Loss: A Unified
Perspective of Pair Similarity Optimization")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, Learner, register_learner
from fewshot.learners.proxies import ProxyLearner, check_in_range, check_positive, cosine_similarity, pair_masks


def circle_logits(similarity: torch.Tensor, positive: torch.Tensor, m: float, gamma: float) -> torch.Tensor:
    """Each similarity's circle logit: ``-gamma a_p (s - (1 - m))`` where `positive`, else
    ``gamma a_n (s - m)``, with the self-paced weights ``a_p = [1 + m - s]_+`` and ``a_n = [s + m]_+``
    treated as constants (detached, as in the paper's code: they weight each pair's gradient)."""
    detached = similarity.detach()
    pull = -gamma * (1.0 + m - detached).clamp_min(0.0) * (similarity - (1.0 - m))
    push = gamma * (detached + m).clamp_min(0.0) * (similarity - m)
    return torch.where(positive, pull, push)


def circle_loss(similarity: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, m: float,
                gamma: float) -> torch.Tensor:
    """``mean_i log(1 + sum_{j in N_i} exp(logit_ij) * sum_{k in P_i} exp(logit_ik))`` (equation 4 of the
    paper) over the rows ``i`` that have both a positive and a negative (0 without any)."""
    logits = circle_logits(similarity, positive, m, gamma)
    rows = positive.any(1) & negative.any(1)
    if not rows.any():
        return similarity.sum() * 0.0
    logits, positive, negative = logits[rows], positive[rows], negative[rows]
    pull = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    push = torch.logsumexp(logits.masked_fill(~negative, float("-inf")), dim=1)
    return F.softplus(pull + push).mean()


def _check(m: float, gamma: float, loss: str) -> tuple[float, float]:
    return check_in_range("m (the relaxation margin)", m, 0.0, 1.0, loss, high_open=True), check_positive("gamma", gamma, loss)


@register_learner("circle")
class CircleLearner(Learner):
    """Circle loss with pair-wise labels over all pairs of an episode's embeddings (support and query).

    ``s`` is the cosine of L2-normalised embeddings (distance ``cosine``, whose injected module scores
    prototypes at evaluation). ``m`` 0.4 and ``gamma`` 80 are the paper's fine-grained image retrieval
    settings (0.25 and 256 for faces). Equals pytorch-metric-learning's ``CircleLoss(m, gamma)``,
    except that pml averages over the anchors whose loss is above zero, which leaves out an anchor
    whose loss underflows to exactly 0 in float32 (here it counts as a 0).
    """

    normalize = True
    distances = ("cosine",)
    default_distance = "cosine"
    needs_queries = False  # all of the batch's pairs: episodes or class-balanced batches
    min_class_images = 2  # rows with both a positive and a negative: 0 without a positive pair

    def __init__(self, distance: nn.Module | None = None, m: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__(distance)
        self.m, self.gamma = _check(m, gamma, "the circle loss")

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings = batch.embeddings
        positive, negative = pair_masks(batch.labels)
        return circle_loss(cosine_similarity(embeddings, embeddings), positive, negative, self.m, self.gamma)

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}"


@register_learner("circle-class")
class ClassCircleLearner(ProxyLearner):
    """Circle loss with class-level labels: each embedding's one positive is its class proxy, its
    negatives are the proxies of the other training classes, ``mean_x log(1 + exp(logit_y) *
    sum_{c != y} exp(logit_c))`` -- a cross-entropy over the proxies with circle logits.

    Same ``m`` (0.4) and ``gamma`` (80) as the pair form; cosine similarity, embeddings L2-normalised
    by default, nearest prototype at evaluation under the injected cosine distance. Equals
    pytorch-metric-learning's pair ``CircleLoss(m, gamma)`` with the proxies as its reference
    embeddings (``ref_emb``, ``ref_labels = arange(num_classes)``).
    """

    title = "class-level Circle loss"
    normalize = True
    distances = ("cosine",)
    default_distance = "cosine"

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None,
                 m: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__(distance, num_classes, dim)
        self.m, self.gamma = _check(m, gamma, self.title)

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings, labels = self.class_batch(batch)
        positive = F.one_hot(labels, self.num_classes).bool()
        return circle_loss(cosine_similarity(embeddings, self.proxies), positive, ~positive, self.m, self.gamma)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, gamma={self.gamma}"
