"""SphereFace / A-Softmax: a multiplicative angular margin (Liu et al., 2017, "SphereFace: Deep Hypersphere
Embedding for Face Recognition"; the margin function of Liu et al., 2016, "Large-Margin Softmax Loss")."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, register_learner
from fewshot.learners.proxies import CosineSoftmaxLearner, check_positive


def chebyshev(cosine: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(m theta)`` from ``cos(theta)`` by the Chebyshev recurrence ``T_{k+1} = 2c T_k - T_{k-1}``:
    a polynomial in the cosine, so no ``acos`` (whose gradient is infinite at +-1) is differentiated."""
    previous, current = torch.ones_like(cosine), cosine
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2.0 * cosine * current - previous
    return current


def psi(cosine: torch.Tensor, m: int) -> torch.Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta in [k pi/m, (k+1) pi/m]``: ``cos(m theta)``
    made monotonically decreasing on [0, pi] (equation 6 of the SphereFace paper)."""
    with torch.no_grad():  # k is piecewise constant: no gradient flows through it
        theta = torch.acos(cosine.clamp(-1.0, 1.0))
        k = torch.floor(theta * m / math.pi).clamp(0, m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * chebyshev(cosine, m) - 2.0 * k


@register_learner("sphereface")
class SphereFaceLearner(CosineSoftmaxLearner):
    """A-Softmax: the target logit is ``||x|| psi(theta)`` with ``psi`` ``cos(m theta)`` made monotonic,
    ``theta`` the angle between ``x`` and its class proxy (proxies normalised, features not).

    ``margin`` ``m`` is an integer >= 1 (4, the paper's; 1 is a softmax over normalised proxies).
    ``scale`` ``None`` (the default) is the paper's form: logits are scaled by the feature norm
    ``||x||``, so embeddings are *not* L2-normalised by default (with ``--normalize`` every logit
    would lie in [-(2m - 1), 1], too flat to train). A number ``s`` is the normalised variant: logits
    ``s * psi`` / ``s * cos`` with unit features.

    The paper trains only with its annealing: the target logit is ``(lambda cos(theta) + psi(theta)) /
    (1 + lambda)`` with ``lambda = max(lambda_min, lambda_start / (1 + lambda_decay * t))`` at
    training step ``t`` (1000, 5 and 0.12 in the released SphereFace-20 model); without it
    ``m = 4`` does not converge. ``t`` counts the loss calls made in training mode with gradients on,
    in a buffer (``steps``), so a resumed run continues the schedule. ``lambda_start = lambda_min = 0``
    is plain A-Softmax, which equals pytorch-metric-learning's ``SphereFaceLoss(margin=m, scale=1)``.

    At evaluation nearest prototype is by cosine: ``-s cos`` with a ``scale``, else the injected cosine
    distance (the feature norm of a query does not change which prototype is nearest).
    """

    title = "SphereFace"
    normalize = False

    def __init__(self, distance: nn.Module | None = None, num_classes: int | None = None, dim: int | None = None,
                 margin: int = 4, scale: float | None = None, lambda_start: float = 1000.0, lambda_min: float = 5.0,
                 lambda_decay: float = 0.12) -> None:
        super().__init__(distance, num_classes, dim)
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
            raise ValueError(f"margin must be an integer >= 1 for SphereFace (the angle multiplier m), got {margin!r}")
        for name, value in (("lambda_start", lambda_start), ("lambda_min", lambda_min), ("lambda_decay", lambda_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 for SphereFace, got {value!r}")
        self.margin = margin
        self._scale = None if scale is None else check_positive("scale", scale, self.title)
        self.lambda_start, self.lambda_min, self.lambda_decay = float(lambda_start), float(lambda_min), float(lambda_decay)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def scale(self) -> float | None:
        """The fixed logit scale, or None: logits are scaled by each feature's norm."""
        return self._scale

    @property
    def scoring_distance(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return self.distance if self._scale is None else super().scoring_distance

    def annealing(self) -> float:
        """The current ``lambda`` of the annealed target logit."""
        return max(self.lambda_min, self.lambda_start / (1.0 + self.lambda_decay * int(self.steps)))

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        blend = self.annealing()
        return (blend * cosine + psi(cosine, self.margin)) / (1.0 + blend)

    def scale_logits(self, logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        if self._scale is None:
            return logits * embeddings.norm(dim=1, keepdim=True)
        return self._scale * logits

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        value = super().loss(batch, generator)
        if self.training and torch.is_grad_enabled():
            self.steps += 1
        return value

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, margin={self.margin}, scale={self._scale}, lambda_start={self.lambda_start}, "
                f"lambda_min={self.lambda_min}, lambda_decay={self.lambda_decay}")
