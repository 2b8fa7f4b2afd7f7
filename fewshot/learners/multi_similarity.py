"""Multi-similarity loss with its pair mining (Wang et al., 2019, "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning")."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, Learner, register_learner
from fewshot.learners.proxies import check_in_range, check_positive, cosine_similarity, log_one_plus_sum_exp, pair_masks
from fewshot.learners.miners import MultiSimilarityMiner


def multi_similarity_loss(similarity: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, alpha: float,
                          beta: float, base: float) -> torch.Tensor:
    """``1/n sum_i [1/alpha log(1 + sum_{j in P_i} exp(-alpha (S_ij - base)))
    + 1/beta log(1 + sum_{k in N_i} exp(beta (S_ik - base)))]`` (equation 12 of the paper) over the
    rows of the ``[n, n]`` similarities, with the pairs `positive` / `negative` (boolean masks);
    anchors with no pair count with a zero loss."""
    pull = log_one_plus_sum_exp(-alpha * (similarity - base), positive) / alpha
    push = log_one_plus_sum_exp(beta * (similarity - base), negative) / beta
    return (pull + push).mean()


@register_learner("multi-similarity")
class MultiSimilarityLearner(Learner):
    """Multi-similarity loss over the pairs of an episode's embeddings (support and query together).

    On cosine similarities of L2-normalised embeddings (the loss normalises them itself; distance
    ``cosine``, whose injected module scores prototypes at evaluation). ``alpha`` 2, ``beta`` 50,
    ``base`` (the paper's lambda) 0.5 and the miner's ``epsilon`` 0.1 are the paper's released
    settings; ``mine=false`` uses all pairs. Equals pytorch-metric-learning's
    ``MultiSimilarityLoss(alpha, beta, base)`` on the pairs of its ``MultiSimilarityMiner(epsilon)``.
    """

    normalize = True
    distances = ("cosine",)
    default_distance = "cosine"
    needs_queries = False  # all of the batch's pairs: episodes or class-balanced batches
    min_class_images = 2  # the miner keeps no pair of an image without a positive: the loss would be 0

    def __init__(self, distance: nn.Module | None = None, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 epsilon: float = 0.1, mine: bool = True) -> None:
        super().__init__(distance)
        self.alpha = check_positive("alpha", alpha, "the multi-similarity loss")
        self.beta = check_positive("beta", beta, "the multi-similarity loss")
        self.base = check_in_range("base", base, -1.0, 1.0, "the multi-similarity loss")
        self.miner = MultiSimilarityMiner(epsilon) if mine else None

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings = batch.embeddings
        similarity = cosine_similarity(embeddings, embeddings)
        if self.miner is not None:
            positive, negative = self.miner(similarity, batch.labels)
        else:
            positive, negative = pair_masks(batch.labels)
        return multi_similarity_loss(similarity, positive, negative, self.alpha, self.beta, self.base)

    def extra_repr(self) -> str:
        epsilon = None if self.miner is None else self.miner.epsilon
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}, epsilon={epsilon}"
