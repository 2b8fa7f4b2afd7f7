"""TIM (Boudiaf et al. 2020, "Transductive Information Maximization For Few-Shot Learning", NeurIPS) by gradient
descent (TIM-GD), and alpha-TIM (Veilleux et al. 2021, "Realistic evaluation of transductive few-shot learning",
NeurIPS), its variant with alpha-entropies for class-imbalanced query sets.

Both fine-tune one weight vector per class (started at the class means of the support embeddings; the embedding
stays frozen) to minimise ``ce_weight * CE(support) - (marginal_weight * H(mean query prediction) -
conditional_weight * mean H(query prediction))``: fit the support set, make each query's prediction confident and
the queries' classes spread out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fewshot.evaluation.heads.base import Head, HeadContext, register_head
from fewshot.evaluation.heads.common import choice, class_means, cosine, positive_float, positive_int, prepared

#: How a query's logits come from the class weights: TIM's ``-temperature / 2 * ||z - w||^2``, or
#: ``temperature * cos(z, w)`` (easyfsl's TIM).
SIMILARITIES = ("euclidean", "cosine")


def shannon_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each row of ``probabilities`` (last dimension)."""
    return -(probabilities * torch.log(probabilities + 1e-12)).sum(-1)


def alpha_entropy(probabilities: torch.Tensor, alpha: float) -> torch.Tensor:
    """Tsallis alpha-entropy ``(1 - sum p^alpha) / (alpha - 1)`` of each row (Shannon's as alpha -> 1)."""
    return (1 - probabilities.pow(alpha).sum(-1)) / (alpha - 1)


class TIMBase(Head):
    """The shared TIM fine-tuning loop; subclasses choose the entropy."""

    transductive = True
    head_name = "tim-gd"

    def __init__(self, temperature: float, ce_weight: float, marginal_weight: float, conditional_weight: float,
                 steps: int, lr: float, similarity: str, normalize: bool) -> None:
        self.temperature = positive_float(self.head_name, "temperature", temperature)
        self.ce_weight = positive_float(self.head_name, "ce_weight", ce_weight, allow_zero=True)
        self.marginal_weight = positive_float(self.head_name, "marginal_weight", marginal_weight, allow_zero=True)
        self.conditional_weight = positive_float(self.head_name, "conditional_weight", conditional_weight,
                                                 allow_zero=True)
        self.steps = positive_int(self.head_name, "steps", steps, minimum=0)
        self.lr = positive_float(self.head_name, "lr", lr)
        self.similarity = choice(self.head_name, "similarity", similarity, SIMILARITIES)
        self.normalize = bool(normalize)

    def entropy(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The entropy of the marginal and conditional terms, per row."""
        return shannon_entropy(probabilities)

    def scores(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, ways]`` of ``features`` under the class ``weights``."""
        if self.similarity == "cosine":
            return self.temperature * cosine(features, weights)
        # ||z - w||^2 expanded: cheaper than cdist under autograd, and the same numbers up to rounding.
        squared = (features * features).sum(1, keepdim=True) - 2 * features @ weights.T + (weights * weights).sum(1)
        return -self.temperature / 2 * squared

    def entropy_slope(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The derivative of :meth:`entropy` with respect to each probability, elementwise."""
        return -torch.log(probabilities + 1e-12) - probabilities / (probabilities + 1e-12)

    def loss(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor:
        """The TIM loss of the class ``weights``."""
        support_loss = F.cross_entropy(self.scores(support, weights), support_labels)
        probabilities = self.scores(query, weights).softmax(1)
        marginal = self.entropy(probabilities.mean(0))
        conditional = self.entropy(probabilities).mean(0)
        return self.ce_weight * support_loss - (self.marginal_weight * marginal - self.conditional_weight * conditional)

    def gradient(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
        """The gradient of :meth:`loss` for Euclidean logits, in closed form (autograd's per-step overhead
        dominates these small problems): with ``G`` the loss's gradient with respect to the logits,
        ``dL/dw_k = temperature * sum_i G_ik (z_i - w_k)``."""
        ways = len(weights)
        support_probabilities = self.scores(support, weights).softmax(1)
        support_grad = self.ce_weight * (support_probabilities - F.one_hot(support_labels, ways).to(support.dtype))
        support_grad = support_grad / len(support)
        probabilities = self.scores(query, weights).softmax(1)
        # dLoss/dp_ik, then through the softmax: G_ij = p_ij (u_ij - sum_k u_ik p_ik).
        slope = (-self.marginal_weight * self.entropy_slope(probabilities.mean(0))[None, :]
                 + self.conditional_weight * self.entropy_slope(probabilities)) / len(query)
        query_grad = probabilities * (slope - (slope * probabilities).sum(1, keepdim=True))
        logits_grad = torch.cat([support_grad, query_grad])
        features = torch.cat([support, query])
        return self.temperature * (logits_grad.T @ features - logits_grad.sum(0)[:, None] * weights)

    def fitted_weights(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                       ways: int, closed_form: bool = True) -> torch.Tensor:
        """The class weights ``[ways, d]`` after ``steps`` Adam steps (PyTorch's defaults, rate ``lr``) on the TIM
        loss, started at the support class means (features as given). Euclidean logits use the closed-form
        gradient unless ``closed_form=False``; cosine logits use autograd."""
        weights = class_means(support, support_labels, ways)
        if self.similarity == "euclidean" and closed_form:
            with torch.no_grad():
                first, second = torch.zeros_like(weights), torch.zeros_like(weights)
                beta1, beta2, eps = 0.9, 0.999, 1e-8
                for step in range(1, self.steps + 1):
                    grad = self.gradient(support, support_labels, query, weights)
                    first.mul_(beta1).add_(grad, alpha=1 - beta1)
                    second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denominator = (second.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
                    weights = weights - (self.lr / (1 - beta1 ** step)) * first / denominator
            return weights
        weights.requires_grad_()
        optimizer = torch.optim.Adam([weights], lr=self.lr)
        for _ in range(self.steps):
            loss = self.loss(support, support_labels, query, weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return weights.detach()

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():  # the evaluator scores under no_grad
            support, query = prepared(support, query, self.normalize)
            weights = self.fitted_weights(support, support_labels, query, ways)
            return self.scores(query, weights).detach()


@register_head("tim-gd")
class TIMGD(TIMBase):
    """TIM-GD with the paper's settings: L2-normalised embeddings, logits ``-temperature / 2 * ||z - w||^2`` with
    temperature 15, loss weights 0.1 (support cross-entropy), 1 (marginal entropy) and 0.1 (conditional entropy),
    1000 Adam steps at lr 1e-4 on the class weights.

    Args:
        similarity: "euclidean" (TIM) or "cosine" (``temperature * cos``, as easyfsl's TIM).
        normalize: L2-normalise the embeddings first.
    """

    head_name = "tim-gd"

    def __init__(self, temperature: float = 15.0, ce_weight: float = 0.1, marginal_weight: float = 1.0,
                 conditional_weight: float = 0.1, steps: int = 1000, lr: float = 1e-4,
                 similarity: str = "euclidean", normalize: bool = True) -> None:
        super().__init__(temperature, ce_weight, marginal_weight, conditional_weight, steps, lr, similarity, normalize)


@register_head("alpha-tim")
class AlphaTIM(TIMBase):
    """alpha-TIM: TIM-GD with Tsallis alpha-entropies (``alpha`` > 0, not 1) in the marginal and conditional terms
    (the support term stays cross-entropy), loss weights 1, 1, 1, temperature 15, 1000 Adam steps at lr 1e-4
    (the settings of Veilleux et al.'s code; the paper tunes ``alpha`` on validation tasks, default 5)."""

    head_name = "alpha-tim"

    def __init__(self, alpha: float = 5.0, temperature: float = 15.0, ce_weight: float = 1.0,
                 marginal_weight: float = 1.0, conditional_weight: float = 1.0, steps: int = 1000, lr: float = 1e-4,
                 similarity: str = "euclidean", normalize: bool = True) -> None:
        super().__init__(temperature, ce_weight, marginal_weight, conditional_weight, steps, lr, similarity, normalize)
        self.alpha = positive_float(self.head_name, "alpha", alpha)
        if self.alpha == 1.0:
            raise ValueError("alpha-tim: alpha must differ from 1 (alpha -> 1 is TIM's Shannon entropy: use tim-gd)")

    def entropy(self, probabilities: torch.Tensor) -> torch.Tensor:
        return alpha_entropy(probabilities, self.alpha)

    def entropy_slope(self, probabilities: torch.Tensor) -> torch.Tensor:
        return -self.alpha / (self.alpha - 1) * probabilities.pow(self.alpha - 1)
