"""NormFace / normalized softmax: a cosine classifier over class proxies (Wang et al., 2017, "NormFace:
L2 Hypersphere Embedding for Face Verification"; Zhai & Wu, 2019, "Classification is a Strong Baseline
for Deep Metric Learning")."""

from __future__ import annotations

import math

import torch
from torch import nn

from fewshot.learners.base import register_learner
from fewshot.learners.proxies import CosineSoftmaxLearner, check_positive


@register_learner("normface")
class NormFaceLearner(CosineSoftmaxLearner):
    """``cross_entropy(s * cos(x, w_c), y)`` over one proxy ``w_c`` per training class, no margin.

    ``scale`` is ``s`` (inverse temperature; 16 by default). With ``learn_scale`` (NormFace's choice,
    the default) it is a parameter, learned as ``log s`` so it stays positive; otherwise it is fixed
    (Zhai & Wu's normalized softmax, temperature ``1/s``). Equals pytorch-metric-learning's
    ``NormalizedSoftmaxLoss(temperature=1/s)``.
    """

    title = "NormFace"

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None,
                 scale: float = 16.0, learn_scale: bool = True) -> None:
        super().__init__(distance, num_classes, dim)
        log_scale = torch.tensor(math.log(check_positive("scale", scale, self.title)))
        self.learn_scale = bool(learn_scale)
        if self.learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()
