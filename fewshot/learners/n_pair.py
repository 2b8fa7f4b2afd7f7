"""Multi-class N-pair loss (Sohn, 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, Learner, register_learner


def n_pair_loss(anchors: torch.Tensor, positives: torch.Tensor, l2_reg: float = 0.0) -> torch.Tensor:
    """``1/N sum_i log(1 + sum_{j != i} exp(f_i . f_j+ - f_i . f_i+))`` over ``N`` pairs of different
    classes (row ``i`` of `anchors` and of `positives`), i.e. cross-entropy of the anchors' inner
    products with the positives; plus ``l2_reg`` times the mean squared norm of the 2N embeddings."""
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise ValueError(f"expected anchors and positives of the same [N, d] shape, got {tuple(anchors.shape)} "
                         f"and {tuple(positives.shape)}")
    if len(anchors) == 0:
        return anchors.sum() * 0.0
    targets = torch.arange(len(anchors), device=anchors.device)
    loss = F.cross_entropy(anchors @ positives.T, targets)
    if l2_reg:
        loss = loss + l2_reg * torch.cat([anchors, positives]).pow(2).sum(1).mean()
    return loss


def one_pair_per_class(labels: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An (anchor, positive) index pair per class that has two or more items, drawn uniformly without
    replacement within the class with `generator`; classes in increasing label order."""
    keys = torch.rand(len(labels), generator=generator, device=generator.device if generator is not None else None)
    order = keys.to(labels.device).argsort()
    order = order[labels[order].argsort(stable=True)]  # by class, in random order within each class
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    starts = starts[counts >= 2]
    return order[starts], order[starts + 1]


@register_learner("n-pair")
class NPairLearner(Learner):
    """N-pair loss on one (anchor, positive) pair per class of the episode, drawn with the episode's
    generator (Sohn's N pairs from N classes; the other items of the class are not used that step).

    Sohn's loss is on inner products of *unnormalised* embeddings with an L2 penalty on their norms
    (``l2_reg``, 0.002 as in the paper) instead of normalisation, so embeddings are not L2-normalised
    by default; with ``--normalize`` the inner product is the cosine (pytorch-metric-learning's default
    ``NPairsLoss``). With ``l2_reg=0`` it equals pml's ``NPairsLoss(distance=DotProductSimilarity(
    normalize_embeddings=False))`` on the same pairs.

    No registered distance is an inner product: at evaluation nearest prototype is by cosine (the
    injected ``cosine`` distance, the only one accepted), which does not favour prototypes of large
    norm as the raw inner product would.
    """

    distances = ("cosine",)
    default_distance = "cosine"
    needs_queries = False  # all of the batch's pairs: episodes or class-balanced batches
    min_class_images = 2  # an (anchor, positive) pair per class, and two pairs: 0 without them

    def __init__(self, distance: nn.Module | None = None, l2_reg: float = 0.002) -> None:
        super().__init__(distance)
        if isinstance(l2_reg, bool) or not isinstance(l2_reg, (int, float)) or not math.isfinite(l2_reg) or l2_reg < 0:
            raise ValueError(f"l2_reg must be a finite number >= 0 for the N-pair loss, got {l2_reg!r}")
        self.l2_reg = float(l2_reg)

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings = batch.embeddings
        anchor, positive = one_pair_per_class(batch.labels, generator)
        if len(anchor) < 2:  # a single pair has no negative
            return embeddings.sum() * 0.0
        return n_pair_loss(embeddings[anchor], embeddings[positive], self.l2_reg)

    def extra_repr(self) -> str:
        return f"l2_reg={self.l2_reg}"
