"""Baseline and Baseline++ (Chen et al. 2019, "A Closer Look at Few-shot Classification"): a new classifier trained
on the frozen support embeddings, linear (Baseline) or cosine (Baseline++), for a fixed budget of steps."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.evaluation.heads.base import Head, HeadContext, register_head


def check_budget(steps: int, lr: float, scale: float, weight_decay: float) -> None:
    """Refuse a step budget, learning rate, cosine scale or weight decay that cannot train a classifier."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


class SupportClassifier(nn.Module):
    """A ``ways``-way classifier of ``dim``-d features: linear with a bias, or ``scale`` times the cosine of the
    feature and each class's weight vector (Baseline++). The weights start uniform in +-1/sqrt(dim) (PyTorch's
    `nn.Linear` range), drawn from ``generator``; the bias starts at zero."""

    def __init__(self, dim: int, ways: int, cosine: bool, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter((torch.rand(ways, dim, generator=generator) * 2 - 1) * bound)
        self.bias = None if cosine else nn.Parameter(torch.zeros(ways))
        self.cosine, self.scale = cosine, scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T
        return F.linear(features, self.weight, self.bias)


def train_steps(parameters: list[nn.Parameter], loss: Callable[[], torch.Tensor], steps: int, lr: float,
                weight_decay: float) -> None:
    """`steps` full-batch steps of SGD with momentum 0.9 (Chen et al.'s optimiser) on `loss()`, gradients on."""
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    with torch.enable_grad():  # the evaluator scores under no_grad
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss().backward()
            optimizer.step()


@register_head("finetune")
class Finetune(Head):
    """A new linear (``cosine=False``, Baseline) or cosine (``cosine=True``, Baseline++, logits ``scale * cos``)
    classifier trained on the support embeddings by cross-entropy: ``steps`` full-batch SGD steps (momentum 0.9,
    ``lr``, ``weight_decay``), initialised from the episode's generator; the embedding stays frozen."""

    def __init__(self, steps: int = 100, lr: float = 0.01, cosine: bool = False, scale: float = 10.0,
                 weight_decay: float = 0.001) -> None:
        check_budget(steps, lr, scale, weight_decay)
        self.steps, self.lr, self.cosine, self.scale, self.weight_decay = steps, lr, cosine, scale, weight_decay

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        features = support.detach().float()
        classifier = SupportClassifier(features.shape[1], ways, self.cosine, self.scale,
                                       context.generator).to(features.device)
        train_steps(list(classifier.parameters()), lambda: F.cross_entropy(classifier(features), support_labels),
                    self.steps, self.lr, self.weight_decay)
        with torch.no_grad():
            return classifier(query.detach().float())
