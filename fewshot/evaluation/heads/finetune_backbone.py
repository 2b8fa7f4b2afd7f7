"""Fine-tuning the whole backbone and a new classifier on an episode's support images (the fine-tuning baseline of
Chen et al. 2019 and Triantafillou et al. 2020, with the backbone unfrozen), for a fixed budget of steps, on a copy
of the model: the evaluated model comes back unchanged."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from fewshot.evaluation.heads.base import Head, HeadContext, register_head
from fewshot.evaluation.heads.common import class_means
from fewshot.evaluation.heads.finetune import SupportClassifier, check_budget, train_steps

#: How the classifier starts: from the support's class means, or at random.
INITS = ("prototype", "random")


@register_head("finetune-backbone")
class FinetuneBackbone(Head):
    """A new linear (or ``cosine``) classifier and the whole backbone trained together on the support images by
    cross-entropy: ``steps`` full-batch SGD steps (momentum 0.9, ``lr``, ``weight_decay``) on a deep copy of the
    model, kept in eval mode (batch-norm keeps its running statistics: a few support images are no batch to
    normalise by). The classifier starts (``init``) from the support's class means, "prototype" (the default: a
    linear layer ``2 p . x - |p|^2``, the squared-Euclidean nearest-prototype rule, or the means as a cosine
    classifier's weights; the support-based initialisation of Triantafillou et al. 2020's Proto-MAML and of
    Dhillon et al. 2020), so that fine-tuning starts from the prototype classifier rather than from chance, or
    "random" (uniform weights from the episode's generator, as `finetune`). The queries are then classified by
    the adapted copy, which is discarded."""

    needs_images = True

    def __init__(self, steps: int = 20, lr: float = 0.001, cosine: bool = False, scale: float = 10.0,
                 weight_decay: float = 0.0, init: str = "prototype") -> None:
        check_budget(steps, lr, scale, weight_decay)
        if init not in INITS:
            raise ValueError(f"unknown finetune-backbone init {init!r}; expected one of {', '.join(INITS)}")
        self.steps, self.lr, self.cosine, self.scale, self.weight_decay = steps, lr, cosine, scale, weight_decay
        self.init = init

    def logits_from_images(self, support_x: torch.Tensor, support_labels: torch.Tensor, query_x: torch.Tensor,
                           ways: int, context: HeadContext) -> torch.Tensor:
        if context.model is None:
            raise ValueError("finetune-backbone adapts the model on the support images; its HeadContext needs model=")
        model = copy.deepcopy(context.model).eval()
        backbone = list(model.backbone.parameters())
        for parameter in backbone:
            parameter.requires_grad_(True)
        with torch.no_grad():
            support = model.embed(support_x)
        classifier = SupportClassifier(support.shape[1], ways, self.cosine, self.scale, context.generator)
        classifier = classifier.to(support_x.device)
        if self.init == "prototype":
            with torch.no_grad():
                means = class_means(support, support_labels, ways)
                classifier.weight.copy_(means if self.cosine else 2 * means)
                if classifier.bias is not None:
                    classifier.bias.copy_(-means.pow(2).sum(dim=1))
        train_steps(backbone + list(classifier.parameters()),
                    lambda: F.cross_entropy(classifier(model.embed(support_x)), support_labels),
                    self.steps, self.lr, self.weight_decay)
        with torch.no_grad():
            return classifier(model.embed(query_x))
