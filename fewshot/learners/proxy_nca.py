"""ProxyNCA: neighbourhood component analysis against one learned proxy per class (Movshovitz-Attias et
al., 2017, "No Fuss Distance Metric Learning using Proxies"; Teh et al., 2020, "ProxyNCA++")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.distances import MetricSpace, describe_distance, metric_space
from fewshot.learners.base import SQUARED_METRICS, EpisodeEmbeddings, register_learner
from fewshot.learners.proxies import ProxyLearner, check_positive


class NormalizedScaled:
    """``scale * d(x / ||x||, y / ||y||)``: a squared metric between unit vectors, as ProxyNCA scores
    its proxies. Not a module: it holds no parameters of its own (the wrapped distance keeps its names)."""

    def __init__(self, distance: nn.Module, scale: float) -> None:
        self.distance = distance
        self.scale = scale

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.scale * self.distance(F.normalize(x, dim=1), F.normalize(y, dim=1))

    def __repr__(self) -> str:
        return f"NormalizedScaled({self.distance!r}, scale={self.scale:g})"

    def metric_space(self) -> MetricSpace | None:
        """The wrapped metric's space after L2 normalisation, scaled (None for a scale <= 0: not a distance)."""
        inner = metric_space(self.distance)
        if inner is None or self.scale <= 0:
            return None
        scale = float(self.scale)
        return MetricSpace(lambda x: inner.transform(F.normalize(x, dim=1)), inner.kind,
                           lambda raw: scale * inner.to_distance(raw))

    def describe(self) -> str:
        return f"{self.scale:g} x {describe_distance(self.distance)} of unit vectors"


@register_learner("proxy-nca")
class ProxyNCALearner(ProxyLearner):
    """``-log softmax(-s d(x^, p^_c))_y`` over the proxies ``p_c`` of all training classes, ``^`` the
    L2 normalisation of embeddings and proxies, ``d`` the squared metric (squared Euclidean by
    default, ``||x^ - p^||^2 = 2 - 2 cos``; a Mahalanobis distance learns a metric as well).

    ``scale`` ``s`` is the softmax scale, 9 by default (ProxyNCA++'s temperature 1/9; the original
    paper has 1). The positive proxy is in the denominator by default, as in ProxyNCA++ and
    pytorch-metric-learning's ``ProxyNCALoss(softmax_scale=s)``, which it then equals (except that pml
    leaves out embeddings whose target probability underflows to exactly 0, whose loss here is large
    but finite only while it has not); ``exclude_positive`` is the original paper's NCA form
    ``-log(exp(-s d_y) / sum_{c != y} exp(-s d_c))``, which can be negative.

    At evaluation nearest prototype uses the same score: ``s d`` between unit query and prototype.
    """

    title = "ProxyNCA"
    normalize = True
    distances = SQUARED_METRICS

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None,
                 scale: float = 9.0, exclude_positive: bool = False) -> None:
        super().__init__(distance, num_classes, dim)
        self.scale = check_positive("scale", scale, self.title)
        self.exclude_positive = bool(exclude_positive)

    @property
    def scoring_distance(self) -> NormalizedScaled:
        return NormalizedScaled(self.distance, self.scale)

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        embeddings, labels = self.class_batch(batch)
        logits = -self.scoring_distance(embeddings, self.proxies)
        if not self.exclude_positive:
            return F.cross_entropy(logits, labels)
        target = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf"))
        return (torch.logsumexp(others, dim=1) - target).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, exclude_positive={self.exclude_positive}"
