"""Shared pieces of the classification-based (proxy) losses and the cosine-similarity losses.

A proxy loss holds one learned vector per *training* class (``proxies [num_classes, dim]``, a
parameter, so it trains with the model and is saved in the checkpoint) and scores every embedding of
an episode against all of them, indexed by the embedding's global class id
(``EpisodeEmbeddings.global_labels``). Proxies are never used at evaluation: novel classes are
classified by nearest prototype, like every learner.

The cosine-softmax family (NormFace, CosFace, ArcFace, SphereFace) is ``cross_entropy(s * f(cos))``
over the proxies, where ``f`` puts a margin on the target class only; `CosineSoftmaxLearner` holds
that shape, and each loss file supplies its ``f`` and scale.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.distances import MetricSpace, cosine_space, describe_cosine
from fewshot.learners.base import EpisodeEmbeddings, Learner


def check_positive(name: str, value: float, loss: str) -> float:
    """`value` as a float, or a ValueError naming it unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 for {loss}, got {value!r}")
    return float(value)


def check_in_range(name: str, value: float, low: float, high: float, loss: str, high_open: bool = False) -> float:
    """`value` as a float, or a ValueError naming it unless ``low <= value <= high`` (``< high`` if `high_open`)."""
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value and (
        value < high if high_open else value <= high)
    if not inside:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket} for {loss}, got {value!r}")
    return float(value)


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` cosines between the rows of ``x [n, d]`` and ``y [m, d]``."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected x [n, d] and y [m, d] with the same d, got {tuple(x.shape)} and {tuple(y.shape)}")
    return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def log_one_plus_sum_exp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log(1 + sum over mask of exp(x))`` along `dim`, stably; 0 where the mask is empty.

    The ``1`` is a zero logit appended to each row: ``logsumexp`` of a row of only ``-inf`` would give
    a NaN gradient, a row with one finite zero never does, and masked entries get a zero gradient.
    """
    masked = x.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros_like(masked.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([masked, zeros], dim=dim), dim=dim)


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, n]`` masks of positive pairs (same label, ``i != j``) and negative pairs (different labels)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


class CosineScore:
    """``-scale * cos(x, y)``: the nearest-prototype score of a cosine-softmax loss, at its own scale.

    Classification only depends on the cosine; keeping the loss's scale makes evaluation logits (and
    ``predict_proba``) the training logits without the margin. Not a module: the scale belongs to the
    loss (a parameter when learned), so checkpoints keep the loss's own names.
    """

    def __init__(self, scale: torch.Tensor | float) -> None:
        self.scale = scale

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.scale * cosine_similarity(x, y)

    def __repr__(self) -> str:
        return f"CosineScore(scale={float(self.scale):g})"

    def metric_space(self) -> MetricSpace | None:
        return cosine_space(self.scale)

    def describe(self) -> str:
        return describe_cosine(self.scale)


class ProxyLearner(Learner):
    """Base of the losses with one learned proxy per training class.

    ``num_classes`` and ``dim`` are injected by the model (the training split's class count and the
    embedding size). Proxies start as ``N(0, 1/dim)`` rows (about unit norm): the cosine losses only
    see their direction, and under Adam a proxy's angular step shrinks as its norm grows.
    """

    #: The loss's name in messages.
    title: ClassVar[str] = "this proxy loss"
    # Every embedding is scored against the proxies: episodes or class-balanced batches alike.
    needs_queries = False
    # The proxies of the other training classes are every image's negatives: one image of one class has a gradient.
    min_batch_classes = 1

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None) -> None:
        super().__init__(distance)
        for name, value in (("num_classes", num_classes), ("dim", dim)):
            if value is None:
                raise ValueError(f"{self.title} learns one proxy per training class and needs {name}; the model "
                                 f"injects it (build it through FewShotModel/train, or pass {name}= yourself)")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int for {self.title}, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"{self.title} needs at least 2 training classes (num_classes), got {num_classes}")
        self.num_classes = num_classes
        self.dim = dim
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))

    def class_batch(self, batch: EpisodeEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """The episode's embeddings ``[n, dim]`` (support and query) and their global class ids ``[n]``."""
        if batch.classes is None:
            raise ValueError(f"{self.title} indexes its class proxies by global class id, but this episode came "
                             "without them: pass classes= (the global class id of each way) to the learner or model; "
                             "train() does")
        embeddings, labels = batch.embeddings, batch.global_labels
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"{self.title} has {self.dim}-dimensional proxies, got embeddings of size {embeddings.shape[1]}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"global class ids must lie in 0..{self.num_classes - 1} (one proxy per training class) for "
                             f"{self.title}, got {sorted(set(batch.classes.tolist()))}")
        return embeddings, labels

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}"


class CosineSoftmaxLearner(ProxyLearner):
    """``cross_entropy(scale * logits, y)`` over cosines to the proxies, ``logits[i, y_i]`` replaced by
    ``target_cosine(cos[i, y_i])`` (the margin) and the other classes' cosines left as they are.

    Defined on cosine similarity: the distance must be ``cosine``, and at evaluation nearest prototype
    uses ``-scale * cos`` with the loss's scale (`CosineScore`), not the cosine distance's temperature.
    Embeddings are L2-normalised by default (prototypes are then means of unit vectors); the loss
    normalises embeddings and proxies itself either way.
    """

    normalize = True
    distances = ("cosine",)
    default_distance = "cosine"

    @property
    def scale(self) -> torch.Tensor | float:
        """The logit scale ``s`` (inverse temperature)."""
        raise NotImplementedError

    @property
    def scoring_distance(self) -> CosineScore:
        # Nearest prototype by cosine, at the scale the loss trains its logits.
        return CosineScore(self.scale)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        """The target class's logit (before scaling) from its cosine ``[n]``: the margin. None: NormFace."""
        return cosine

    def scale_logits(self, logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """``scale * logits``; SphereFace's original form scales by the feature norm instead."""
        return self.scale * logits

    def class_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[n, num_classes]`` training logits of `embeddings` with global class ids `labels`."""
        cosine = cosine_similarity(embeddings, self.proxies)
        index = labels[:, None]
        target = self.target_cosine(cosine.gather(1, index).squeeze(1))
        return self.scale_logits(cosine.scatter(1, index, target[:, None]), embeddings)

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings, labels = self.class_batch(batch)
        return F.cross_entropy(self.class_logits(embeddings, labels), labels)


__all__ = [
    "CosineScore",
    "CosineSoftmaxLearner",
    "ProxyLearner",
    "check_in_range",
    "check_positive",
    "cosine_similarity",
    "log_one_plus_sum_exp",
    "pair_masks",
]
