"""Pairwise distances between embeddings, as modules so that learnable ones train with the model.

Every distance maps ``x: [n, d]`` and ``y: [m, d]`` to ``[n, m]`` (smaller = closer), so
classification logits are ``-distance(query, prototypes)``.

Each distance also answers its own geometry questions (`Distance.metric_space`, `Distance.describe`): whether
faiss and k-means can work in it, and how to name it in a caption. Any other callable is still a distance for
exact search; `metric_space` and `describe_distance` ask a distance, with those defaults for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.registry import Registry, call_with_injected

#: Distance modules by name. A distance is an ``nn.Module`` (best a `Distance`, which adds the geometry
#: questions) mapping ``(x [n, d], y [m, d])`` to ``[n, m]``; its constructor may take ``dim`` (the
#: embedding size), which the model injects.
DISTANCES: Registry = Registry("distance", injected=("dim",))

# Squared distances below this are clamped before the square root, which keeps the gradient
# finite (zero) for coincident points instead of infinite.
SQRT_EPS = 1e-12


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"expected x [n, d] and y [m, d] with the same d, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


@dataclass(frozen=True)
class MetricSpace:
    """A distance written as `to_distance(raw(transform(x), transform(y)))`, where `raw` is the squared
    Euclidean distance ("l2") or the inner product ("ip") of the transformed vectors: what faiss indexes
    and k-means clusters. `to_distance` is increasing for "l2" and decreasing for "ip"."""

    transform: Callable[[torch.Tensor], torch.Tensor]
    kind: str
    to_distance: Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    """`x` unchanged (the transform and the raw-to-distance map of a plain squared Euclidean space)."""
    return x


def metric_space(distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> MetricSpace | None:
    """The `MetricSpace` a distance declares (`distance.metric_space()`); None for a callable that declares none,
    which only exact search (calling it directly) supports."""
    declare = getattr(distance, "metric_space", None)
    return declare() if callable(declare) else None


def describe_distance(distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> str:
    """A distance in words, for captions ("squared Euclidean", "sqrt of diagonal Mahalanobis (squared)", ...):
    `distance.describe()`, else its type's name."""
    describe = getattr(distance, "describe", None)
    return describe() if callable(describe) else type(distance).__name__


def cosine_space(scale: torch.Tensor | float) -> MetricSpace | None:
    """The metric space of ``-scale * cos(x, y)``: inner products of unit vectors; None for a scale <= 0, which
    would reverse the order (not a distance)."""
    scale = float(torch.as_tensor(scale).detach())
    if scale <= 0:
        return None
    return MetricSpace(lambda x: F.normalize(x, dim=1), "ip", lambda raw: -scale * raw)


def describe_cosine(scale: torch.Tensor | float) -> str:
    """``-scale * cos`` in words."""
    return f"-{float(torch.as_tensor(scale).detach()):.3g} x cosine"


class Distance(nn.Module):
    """Base of the distance modules: ``forward(x [n, d], y [m, d]) -> [n, m]``, plus the geometry questions
    search and clustering ask. The defaults say "no metric space" (exact search only) and give the class name;
    a distance that is a squared Euclidean or inner-product geometry after a transform overrides them."""

    def metric_space(self) -> MetricSpace | None:
        """How faiss and k-means can work in this distance; None: they cannot (exact search only)."""
        return None

    def describe(self) -> str:
        """This distance in words, for captions."""
        return type(self).__name__


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` matrix of ``||x_i - y_j||^2``."""
    _check_pair(x, y)
    # ||x||^2 + ||y||^2 - 2 x.y is one matrix product instead of an [n, m, d] difference tensor;
    # rounding can make it slightly negative, hence the clamp.
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2.0 * x @ y.T
    return squared.clamp_min(0.0)


def euclidean(x: torch.Tensor, y: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """``[n, m]`` matrix of ``||x_i - y_j||``, with a finite gradient at zero distance."""
    return squared_euclidean(x, y).clamp_min(eps).sqrt()


@DISTANCES.register("euclidean")
class SquaredEuclidean(Distance):
    """``d(x, y) = ||x - y||^2`` (Prototypical Networks)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return squared_euclidean(x, y)

    def metric_space(self) -> MetricSpace:
        return MetricSpace(identity, "l2", identity)

    def describe(self) -> str:
        return "squared Euclidean"


@DISTANCES.register("cosine")
class Cosine(Distance):
    """``-scale * cos(x, y)``: a distance only up to an additive constant.

    Logits ``-d`` are then ``scale * cos``; the scale (inverse temperature) sharpens the softmax
    over cosines, which otherwise lie in [-1, 1]. It is learned when ``learn_temperature``.
    """

    def __init__(self, temperature: float = 10.0, learn_temperature: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature (the cosine scale) must be positive, got {temperature}")
        scale = torch.tensor(float(temperature))
        if learn_temperature:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y)
        return -self.scale * (F.normalize(x, dim=1) @ F.normalize(y, dim=1).T)

    def metric_space(self) -> MetricSpace | None:
        return cosine_space(self.scale)

    def describe(self) -> str:
        return describe_cosine(self.scale)


@DISTANCES.register("mahalanobis")
class Mahalanobis(Distance):
    """Learned Mahalanobis distance ``d(x, y) = ||L (x - y)||^2``, i.e. ``M = L^T L``.

    Implemented as whitening: both sides are mapped by ``L`` (``transform``) and compared with the
    squared Euclidean distance, which costs one ``[n, d] x [d, k]`` product per side instead of a
    ``[n, m, d]`` difference tensor. ``L`` is

    - full ``[dim, dim]``, initialised to the identity (the default);
    - low-rank ``[rank, dim]`` (``rank=k``), initialised to the first ``k`` rows of the identity
      (deterministic: a projection onto the first ``k`` coordinates, the identity when ``k = dim``);
    - diagonal (``diagonal=True``): a vector of per-dimension scales, initialised to ones.
    """

    def __init__(self, dim: int, rank: int | None = None, diagonal: bool = False) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be a positive embedding size, got {dim}")
        if diagonal and rank is not None:
            raise ValueError(f"choose a diagonal or a low-rank L, not both (rank={rank})")
        if rank is not None and not 1 <= rank <= dim:
            raise ValueError(f"rank must be in [1, dim={dim}], got {rank}")
        self.dim = dim
        self.rank = rank
        self.diagonal = diagonal
        if diagonal:
            self.L = nn.Parameter(torch.ones(dim))
        else:
            self.L = nn.Parameter(torch.eye(dim)[: rank or dim].clone())

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Map embeddings ``[n, dim]`` to whitened coordinates ``L x`` (``[n, rank or dim]``)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected embeddings [n, {self.dim}], got {tuple(x.shape)}")
        return x * self.L if self.diagonal else x @ self.L.T

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return squared_euclidean(self.transform(x), self.transform(y))

    def metric_space(self) -> MetricSpace:
        return MetricSpace(self.transform, "l2", identity)

    def describe(self) -> str:
        return f"{'diagonal ' if self.diagonal else 'low-rank ' if self.rank else ''}Mahalanobis (squared)"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, diagonal={self.diagonal}"


@DISTANCES.register("mahalanobis-diag")
class DiagonalMahalanobis(Mahalanobis):
    """Mahalanobis distance with a diagonal ``L``: a learned scale per embedding dimension."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, diagonal=True)


@DISTANCES.register("mahalanobis-lowrank")
class LowRankMahalanobis(Mahalanobis):
    """Mahalanobis distance with a ``[rank, dim]`` ``L`` (default rank: a quarter of the embedding size)."""

    def __init__(self, dim: int, rank: int | None = None) -> None:
        super().__init__(dim, rank=max(1, dim // 4) if rank is None else rank)


def build_distance(name: str, dim: int, **kwargs) -> nn.Module:
    """Build the distance called ``name`` for ``dim``-dimensional embeddings.

    ``euclidean`` is the *squared* Euclidean distance (Prototypical Networks); ``mahalanobis-lowrank``
    takes ``rank`` (default ``dim // 4``). Extra keyword arguments go to the distance's constructor.
    """
    factory = DISTANCES.get_or_raise(name)
    DISTANCES.check_arguments(name, kwargs, "distance argument")
    return call_with_injected(factory, kwargs, dim=dim)
