"""Distances between embeddings as the metric functions take them: a callable or a registered distance name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
from numpy.typing import ArrayLike
from torch import Tensor

from fewshot.distances import build_distance

DistanceFn = Callable[[Tensor, Tensor], Tensor]
Distance = Union[str, DistanceFn]


def resolve_distance(distance: Distance, dim: int) -> DistanceFn:
    """A callable as it is; a name built from the distance registry that training uses (one vocabulary:
    "euclidean" is the squared Euclidean distance here as in Prototypical Networks)."""
    if callable(distance):
        return distance
    return build_distance(distance, dim)


def pairwise(distance_fn: DistanceFn, x: Tensor, y: Tensor) -> Tensor:
    result = distance_fn(x, y)
    if result.shape != (x.shape[0], y.shape[0]):
        raise ValueError(
            f"distance function must return a [{x.shape[0]}, {y.shape[0]}] matrix, got "
            f"{tuple(result.shape)}"
        )
    return result


def check_embeddings(embeddings: Tensor | ArrayLike, labels: Tensor | ArrayLike) -> tuple[
    Tensor, Tensor
]:
    embeddings = torch.as_tensor(embeddings).detach()
    labels = torch.as_tensor(labels).detach().cpu()
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {tuple(embeddings.shape)}")
    if not embeddings.dtype.is_floating_point:
        embeddings = embeddings.float()
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"labels must be [n] with n={embeddings.shape[0]} embeddings, got shape "
            f"{tuple(labels.shape)}"
        )
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain non-finite values (NaN or inf)")
    if embeddings.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings, got {embeddings.shape[0]}")
    return embeddings, labels
