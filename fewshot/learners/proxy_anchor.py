"""Proxy-Anchor loss: each class proxy is an anchor for all the batch's embeddings (Kim et al., 2020,
"Proxy Anchor Loss for Deep Metric Learning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, register_learner
from fewshot.learners.proxies import ProxyLearner, check_in_range, check_positive, cosine_similarity, log_one_plus_sum_exp


@register_learner("proxy-anchor")
class ProxyAnchorLearner(ProxyLearner):
    """``1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
    + 1/|P| sum_{p in P} log(1 + sum_{x in X_p-} exp(alpha (s(x, p) + delta)))``.

    ``s`` is the cosine, ``P`` all proxies (one per training class), ``P+`` those with an embedding of
    their class in the batch, ``X_p+`` / ``X_p-`` the batch's embeddings of / not of the class of ``p``.
    ``alpha`` 32 and ``margin`` ``delta`` 0.1 are the paper's. Equals pytorch-metric-learning's
    ``ProxyAnchorLoss(margin=delta, alpha=alpha)``. The paper trains the proxies with a 100x larger
    learning rate; here they share the model's.

    Defined on cosine similarity (distance ``cosine``, embeddings L2-normalised by default); at
    evaluation nearest prototype uses the injected cosine distance.
    """

    title = "Proxy-Anchor"
    normalize = True
    distances = ("cosine",)
    default_distance = "cosine"

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None,
                 alpha: float = 32.0, margin: float = 0.1) -> None:
        super().__init__(distance, num_classes, dim)
        self.alpha = check_positive("alpha", alpha, self.title)
        self.margin = check_in_range("margin", margin, 0.0, 1.0, self.title)

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings, labels = self.class_batch(batch)
        cosine = cosine_similarity(embeddings, self.proxies)  # [n, num_classes]
        positive = F.one_hot(labels, self.num_classes).bool()
        # Sums over the batch's embeddings for each proxy (dim 0).
        pull = log_one_plus_sum_exp(-self.alpha * (cosine - self.margin), positive, dim=0)
        push = log_one_plus_sum_exp(self.alpha * (cosine + self.margin), ~positive, dim=0)
        with_positives = positive.any(0).sum()
        return pull.sum() / with_positives + push.sum() / self.num_classes

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, margin={self.margin}"
