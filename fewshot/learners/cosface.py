"""CosFace / AM-Softmax: an additive cosine margin (Wang et al., 2018, "CosFace: Large Margin Cosine Loss
for Deep Face Recognition"; Wang et al., 2018, "Additive Margin Softmax for Face Verification")."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.learners.base import register_learner
from fewshot.learners.proxies import CosineSoftmaxLearner, check_in_range, check_positive


@register_learner("cosface")
class CosFaceLearner(CosineSoftmaxLearner):
    """``cross_entropy(s * (cos(x, w_c) - m [c = y]), y)``: the target cosine must beat the others by ``m``.

    ``margin`` ``m`` in [0, 1] (0.35 by default; 0 is NormFace with a fixed scale), ``scale`` ``s`` > 0
    (64 by default, the paper's). Equals pytorch-metric-learning's ``CosFaceLoss(margin=m, scale=s)``.
    """

    title = "CosFace"

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None,
                 margin: float = 0.35, scale: float = 64.0) -> None:
        super().__init__(distance, num_classes, dim)
        self.margin = check_in_range("margin", margin, 0.0, 1.0, self.title)
        self._scale = check_positive("scale", scale, self.title)

    @property
    def scale(self) -> float:
        return self._scale

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self._scale}"
