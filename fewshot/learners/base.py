"""What every learner shares: its output type and nearest-prototype logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewshot.distances import Euclidean


@dataclass
class LearnerOutput:
    """A learner's loss on an episode and its nearest-prototype logits ``[n_query, ways]``."""

    loss: torch.Tensor
    logits: torch.Tensor


def episode_ways(support_labels: torch.Tensor) -> int:
    """Number of classes of an episode whose support labels are ``0..ways-1``, each present."""
    if support_labels.dim() != 1 or len(support_labels) == 0:
        raise ValueError(f"support_labels must be a non-empty [n] vector, got {tuple(support_labels.shape)}")
    ways = int(support_labels.max()) + 1
    counts = torch.bincount(support_labels, minlength=ways)
    if int(support_labels.min()) < 0 or bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"support labels must cover 0..ways-1 with every class present; got labels "
            f"{sorted(set(support_labels.tolist()))} (missing {missing})"
        )
    return ways


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """``[ways, d]`` class means of the support embeddings ``[n_support, d]``."""
    if support.dim() != 2 or support_labels.shape != (support.shape[0],):
        raise ValueError(
            f"expected support [n, d] and support_labels [n], got {tuple(support.shape)} "
            f"and {tuple(support_labels.shape)}"
        )
    if len(support_labels) and (int(support_labels.min()) < 0 or int(support_labels.max()) >= ways):
        raise ValueError(f"support labels must lie in 0..{ways - 1}, got {sorted(set(support_labels.tolist()))}")
    counts = torch.bincount(support_labels, minlength=ways)
    if bool((counts == 0).any()):
        raise ValueError(f"classes {(counts == 0).nonzero().flatten().tolist()} have no support example")
    sums = torch.zeros(ways, support.shape[1], dtype=support.dtype, device=support.device)
    sums.index_add_(0, support_labels, support)
    return sums / counts[:, None].to(support.dtype)


def prototype_logits(
    distance: nn.Module,
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    ways: int,
) -> torch.Tensor:
    """``[n_query, ways]`` logits ``-distance(query, prototypes)``."""
    return -distance(query, prototypes(support, support_labels, ways))


def check_query_labels(query_labels: torch.Tensor, query: torch.Tensor, ways: int) -> None:
    """Raise unless ``query_labels`` is an ``[n_query]`` vector of labels in ``0..ways-1``."""
    if query_labels.shape != (query.shape[0],):
        raise ValueError(
            f"query_labels must have shape ({query.shape[0]},) to match query, got {tuple(query_labels.shape)}"
        )
    if len(query_labels) and (int(query_labels.min()) < 0 or int(query_labels.max()) >= ways):
        raise ValueError(
            f"query labels must lie in 0..{ways - 1} (the support's classes), got "
            f"{sorted(set(query_labels.tolist()))}"
        )


class PooledLearner(nn.Module):
    """A learner whose loss is over the episode's support and query embeddings pooled together
    (pairs or triplets), trained and monitored with the Euclidean distance.

    Subclasses implement `pooled_loss`; logits are Euclidean nearest-prototype logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.distance = Euclidean()

    def pooled_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

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
        loss = self.pooled_loss(torch.cat([support, query]), torch.cat([support_labels, query_labels]), generator)
        return LearnerOutput(loss=loss, logits=prototype_logits(self.distance, support, support_labels, query, ways))
