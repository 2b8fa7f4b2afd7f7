"""What a trained model's distance is, in the terms exact search, faiss and k-means need (a metric space)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MetricSpace:
    """A distance written as `to_distance(raw(transform(x), transform(y)))`, where `raw` is the squared
    Euclidean distance ("l2") or the inner product ("ip") of the transformed vectors: what faiss indexes
    and k-means clusters. `to_distance` is increasing for "l2" and decreasing for "ip"."""

    transform: Callable[[Tensor], Tensor]
    kind: str
    to_distance: Callable[[Tensor], Tensor]


def metric_space(distance: Callable[[Tensor, Tensor], Tensor]) -> MetricSpace | None:
    """The `MetricSpace` of one of fewshot's distances (squared Euclidean, Mahalanobis, cosine, and the
    learners' wrappers of them: square root, normalised-and-scaled, scaled cosine); None for any other
    callable, which only exact search (calling it directly) supports."""
    from fewshot.distances import Cosine, Euclidean, Mahalanobis, SquaredEuclidean
    from fewshot.learners.base import SquareRoot
    from fewshot.learners.proxies import CosineScore
    from fewshot.learners.proxy_nca import NormalizedScaled

    def identity(x: Tensor) -> Tensor:
        return x

    if isinstance(distance, SquaredEuclidean):
        return MetricSpace(identity, "l2", identity)
    if isinstance(distance, Mahalanobis):
        return MetricSpace(distance.transform, "l2", identity)
    if isinstance(distance, Euclidean):
        return MetricSpace(identity, "l2", lambda raw: raw.clamp_min(distance.eps).sqrt())
    if isinstance(distance, (Cosine, CosineScore)):
        scale = float(torch.as_tensor(distance.scale).detach())
        if scale <= 0:  # a non-positive scale would reverse the order: not a distance
            return None
        return MetricSpace(lambda x: F.normalize(x, dim=1), "ip", lambda raw: -scale * raw)
    if isinstance(distance, SquareRoot):
        inner = metric_space(distance.squared)
        if inner is None or inner.kind != "l2":
            return None
        return MetricSpace(inner.transform, "l2", lambda raw: inner.to_distance(raw).clamp_min(distance.eps).sqrt())
    if isinstance(distance, NormalizedScaled):
        inner = metric_space(distance.distance)
        if inner is None or distance.scale <= 0:
            return None
        scale = float(distance.scale)
        return MetricSpace(lambda x: inner.transform(F.normalize(x, dim=1)), inner.kind,
                           lambda raw: scale * inner.to_distance(raw))
    return None


def describe_distance(distance: Callable[[Tensor, Tensor], Tensor]) -> str:
    """A distance in words, for captions: "squared Euclidean", "sqrt of diagonal Mahalanobis", ..."""
    from fewshot.distances import Cosine, Euclidean, Mahalanobis, SquaredEuclidean
    from fewshot.learners.base import SquareRoot
    from fewshot.learners.proxies import CosineScore
    from fewshot.learners.proxy_nca import NormalizedScaled

    if isinstance(distance, SquaredEuclidean):
        return "squared Euclidean"
    if isinstance(distance, Euclidean):
        return "Euclidean"
    if isinstance(distance, Mahalanobis):
        return f"{'diagonal ' if distance.diagonal else 'low-rank ' if distance.rank else ''}Mahalanobis (squared)"
    if isinstance(distance, (Cosine, CosineScore)):
        return f"-{float(torch.as_tensor(distance.scale).detach()):.3g} x cosine"
    if isinstance(distance, SquareRoot):
        return f"sqrt of {describe_distance(distance.squared)}"
    if isinstance(distance, NormalizedScaled):
        return f"{distance.scale:g} x {describe_distance(distance.distance)} of unit vectors"
    return type(distance).__name__
