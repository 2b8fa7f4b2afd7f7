"""Transductive fine-tuning (Dhillon, Chaudhari, Ravichandran and Soatto 2020, "A Baseline for Few-Shot Image
Classification", ICLR): a classifier started from the support set ("support-based initialisation") and fine-tuned
on the support cross-entropy plus the entropy of the query predictions.

What is fine-tuned here: the classifier only (one weight vector and bias per class), on the frozen embeddings. The
paper fine-tunes the whole backbone as well; ``finetune-backbone`` is the head that adapts the backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.evaluation.heads.base import Head, HeadContext, register_head
from fewshot.evaluation.heads.common import choice, class_means, positive_float, positive_int, prepared

#: The classifier's logits: the paper's ``temperature * (z . w + b)`` on L2-normalised embeddings with ``w`` started
#: at the L2-normalised class means, or easyfsl's ``-temperature * ||z - w||`` with ``w`` started at the class means.
CLASSIFIERS = ("linear", "distance")


@register_head("transductive-finetuning")
class TransductiveFinetuning(Head):
    """``steps`` full-batch Adam steps (``lr``) on ``CE(support) + entropy_weight * mean H(query prediction)`` of a
    classifier started from the support set (at step 0: the cosine nearest class mean, times ``temperature``), with
    the paper's settings: 25 steps at lr 5e-5, entropy weight 1, logits unscaled. The paper tunes the backbone too,
    where such steps move the logits far more than they move a classifier alone: on frozen embeddings these
    defaults leave the classifier close to its start. Larger steps let the query entropy act but can collapse the
    predictions onto a few classes (the entropy falls fastest that way, through the biases): on planted clusters
    ``temperature=10, lr=1e-3`` helps, on an Omniglot Conv-4 embedding it costs accuracy; check on validation
    episodes before raising them.

    Args:
        classifier: "linear" (the paper's, on L2-normalised embeddings, with a bias) or "distance" (easyfsl's).
        temperature: multiplies the logits.
        normalize: L2-normalise the embeddings first.
    """

    transductive = True

    def __init__(self, steps: int = 25, lr: float = 5e-5, entropy_weight: float = 1.0, temperature: float = 1.0,
                 classifier: str = "linear", normalize: bool = True) -> None:
        name = "transductive-finetuning"
        self.steps = positive_int(name, "steps", steps, minimum=0)
        self.lr = positive_float(name, "lr", lr)
        self.entropy_weight = positive_float(name, "entropy_weight", entropy_weight, allow_zero=True)
        self.temperature = positive_float(name, "temperature", temperature)
        self.classifier = choice(name, "classifier", classifier, CLASSIFIERS)
        self.normalize = bool(normalize)

    def scores(self, features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, ways]`` of ``features`` under the classifier ``(weights, bias)``."""
        if self.classifier == "distance":
            return -self.temperature * torch.cdist(features, weights)
        return self.temperature * (features @ weights.T + bias)

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():  # the evaluator scores under no_grad
            support, query = prepared(support, query, self.normalize)
            weights = class_means(support, support_labels, ways)
            if self.classifier == "linear":
                weights = F.normalize(weights, dim=1)
            weights.requires_grad_()
            bias = torch.zeros(ways, device=support.device, requires_grad=self.classifier == "linear")
            parameters = [weights, bias] if self.classifier == "linear" else [weights]
            optimizer = torch.optim.Adam(parameters, lr=self.lr)
            for _ in range(self.steps):
                support_loss = F.cross_entropy(self.scores(support, weights, bias), support_labels)
                probabilities = self.scores(query, weights, bias).softmax(1)
                query_entropy = -(probabilities * torch.log(probabilities + 1e-12)).sum(1).mean()
                loss = support_loss + self.entropy_weight * query_entropy
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return self.scores(query, weights, bias).detach()
