"""ArcFace: an additive angular margin (Deng et al., 2019, "ArcFace: Additive Angular Margin Loss for Deep
Face Recognition")."""

from __future__ import annotations

import math

import torch
from torch import nn

from fewshot.learners.base import register_learner
from fewshot.learners.proxies import CosineSoftmaxLearner, check_in_range, check_positive

# cos^2 above 1 - this is clamped before sin = sqrt(1 - cos^2): the root's gradient stays finite at
# cos = +-1 (there the margin term's gradient is zero rather than infinite).
SIN_EPS = 1e-12


@register_learner("arcface")
class ArcFaceLearner(CosineSoftmaxLearner):
    """``cross_entropy(s * cos(theta + m [c = y]), y)`` with ``theta`` the angle to the proxy ``w_c``.

    ``margin`` ``m`` is in radians, in [0, pi/2) (0.5 by default, the paper's), ``scale`` ``s`` 64.
    ``cos(theta + m)`` stops decreasing once ``theta + m > pi``, which would reward pushing a sample
    away from its own proxy; as in the paper's code, past ``theta > pi - m`` the target logit is
    ``cos(theta) - m sin(m)`` instead (a CosFace-style penalty), so it decreases in ``theta`` on all of
    [0, pi]. With ``easy_margin`` the margin applies only where ``cos(theta) > 0`` (``theta < pi/2``),
    elsewhere the target logit is the plain cosine.

    ``cos(theta + m)`` is computed as ``cos cos(m) - sin sin(m)``, not through ``acos``, so the gradient
    is finite at ``cos = +-1``. Equals pytorch-metric-learning's ``ArcFaceLoss(margin=degrees(m),
    scale=s)`` (its margin is in degrees) without ``easy_margin``, which it does not have.
    """

    title = "ArcFace"

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None,
                 margin: float = 0.5, scale: float = 64.0, easy_margin: bool = False) -> None:
        super().__init__(distance, num_classes, dim)
        self.margin = check_in_range("margin (radians)", margin, 0.0, math.pi / 2, self.title, high_open=True)
        self._scale = check_positive("scale", scale, self.title)
        self.easy_margin = bool(easy_margin)

    @property
    def scale(self) -> float:
        return self._scale

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sine = (1.0 - cosine.pow(2)).clamp_min(SIN_EPS).sqrt()
        with_margin = cosine * math.cos(m) - sine * math.sin(m)
        if self.easy_margin:
            return torch.where(cosine > 0, with_margin, cosine)
        # theta <= pi - m  <=>  cos(theta) >= cos(pi - m) = -cos(m).
        return torch.where(cosine >= -math.cos(m), with_margin, cosine - m * math.sin(m))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self._scale}, easy_margin={self.easy_margin}"
