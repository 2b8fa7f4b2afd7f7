"""Matching Networks (Vinyals et al., 2016): attention over the support set, optionally with full-context
embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, Learner, register_learner

__all__ = ["FullContextEmbedding", "MatchingLearner", "matching_log_probabilities"]


def matching_log_probabilities(similarities: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """``[n_query, ways]`` log class probabilities of matching networks: the attention over the support items is
    the softmax of `similarities` ``[n_query, n_support]``, and a class's probability the attention its items
    receive in total (its log: a log-sum-exp over the class's items, exact and stable)."""
    if similarities.dim() != 2 or support_labels.shape != (similarities.shape[1],):
        raise ValueError(f"expected similarities [n_query, n_support] and support_labels [n_support], got "
                         f"{tuple(similarities.shape)} and {tuple(support_labels.shape)}")
    if len(support_labels) and (int(support_labels.min()) < 0 or int(support_labels.max()) >= ways):
        raise ValueError(f"support labels must lie in 0..{ways - 1}, got {sorted(set(support_labels.tolist()))}")
    counts = torch.bincount(support_labels, minlength=ways)
    if bool((counts == 0).any()):
        raise ValueError(f"classes {(counts == 0).nonzero().flatten().tolist()} have no support example")
    log_attention = similarities.log_softmax(dim=1)
    members = support_labels[None, :] == torch.arange(ways, device=support_labels.device)[:, None]  # [ways, n_s]
    masked = log_attention[:, None, :].masked_fill(~members[None], float("-inf"))
    return torch.logsumexp(masked, dim=2)


class FullContextEmbedding(nn.Module):
    """The full-context embeddings of Matching Networks.

    Support: ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)``, a bidirectional LSTM over the support embeddings in
    their episode order, with a skip connection. Query: an attention LSTM run for ``steps`` processing steps,
    ``h_k = LSTM(f'(x), r_{k-1}; h_{k-1}, c_{k-1}) + f'(x)`` with the read-out
    ``r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)``; ``f(x, S) = h_K``. The paper concatenates the read-out to
    the LSTM's hidden state; an LSTM cell's state has one size, so the read-out enters as input here, beside
    the query (the first read-out is the mean of the support, the attention of a zero state).
    """

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.dim = dim
        self.steps = steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_lstm = nn.LSTMCell(2 * dim, dim)

    def embed_support(self, support: torch.Tensor) -> torch.Tensor:
        """``g(S)`` ``[n_support, d]``."""
        both, _ = self.support_lstm(support[None])
        forward, backward = both[0].split(self.dim, dim=1)
        return forward + backward + support

    def embed_query(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``f(x, S)`` ``[n_query, d]`` of the queries against the context-embedded support ``g(S)``."""
        hidden = torch.zeros_like(query)
        cell = torch.zeros_like(query)
        readout = support.mean(dim=0).expand_as(query)
        for _ in range(self.steps):
            hidden, cell = self.query_lstm(torch.cat([query, readout], dim=1), (hidden, cell))
            hidden = hidden + query
            readout = (hidden @ support.T).softmax(dim=1) @ support
        return hidden

    def forward(self, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-context embeddings ``(g(S), f(Q, S))`` of an episode's support and queries."""
        context = self.embed_support(support)
        return context, self.embed_query(query, context)


@register_learner("matching")
class MatchingLearner(Learner):
    """Matching Networks (Vinyals et al., 2016): each query attends to every support item with the softmax of
    their similarity ``-distance`` (cosine by default, as in the paper; the registry's cosine distance has a
    learned scale, ``--metric-arg temperature=1 --metric-arg learn_temperature=false`` for the paper's bare
    cosine); a class's probability is the attention its items receive in total, and the loss the negative
    log-likelihood of the true class. That is also the test-time rule (:meth:`episode_logits`, the log class
    probabilities): the evaluator, ``FewShotModel.logits`` and ``fewshot.api``'s classify use it, not the
    nearest prototype.

    ``fce=True`` adds the full-context embeddings (`FullContextEmbedding`: a bidirectional LSTM over the
    support, an attention LSTM over each query for ``fce_steps`` steps); the model injects ``dim``, the LSTMs'
    size. The paper uses them on miniImageNet, not on Omniglot.

    Search, clustering, verification and embedding metrics compare single embeddings under the distance
    (`scoring_distance`): without FCE that is exactly the similarity the attention uses; with FCE it is the
    embedding before the full-context step, which needs an episode's support to exist.
    """

    default_distance = "cosine"

    def __init__(self, distance: nn.Module | None = None, dim: int | None = None, fce: bool = False,
                 fce_steps: int = 5) -> None:
        super().__init__(distance)
        if not isinstance(fce, bool):
            raise ValueError(f"matching learner fce must be true or false, got {fce!r}")
        if isinstance(fce_steps, bool) or not isinstance(fce_steps, int) or fce_steps < 1:
            raise ValueError(f"matching learner fce_steps (the attention LSTM's processing steps) must be a positive "
                             f"whole number, got {fce_steps!r}")
        if fce and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"the matching learner with fce=True needs the embedding size dim (FewShotModel injects "
                             f"it), got {dim!r}")
        self.fce_steps = fce_steps
        self.context = FullContextEmbedding(dim, fce_steps) if fce else None

    @property
    def fce(self) -> bool:
        """Whether the full-context embeddings are on."""
        return self.context is not None

    def episode_logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                       ways: int) -> torch.Tensor:
        """``[n_query, ways]`` log class probabilities: the log of the attention each class's support items
        receive in total."""
        if support.dim() != 2 or query.dim() != 2 or support.shape[1] != query.shape[1]:
            raise ValueError(f"expected support [n, d] and query [q, d] embeddings, got {tuple(support.shape)} and "
                             f"{tuple(query.shape)}")
        if self.context is not None:
            support, query = self.context(support, query)
        return matching_log_probabilities(-self.distance(query, support), support_labels, ways)

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        return F.nll_loss(batch.logits, batch.query_labels)

    def extra_repr(self) -> str:
        return f"fce={self.fce}" + (f", fce_steps={self.fce_steps}" if self.fce else "")
