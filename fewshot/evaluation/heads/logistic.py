"""Logistic regression on the support embeddings, as RFS evaluates its embeddings (Tian et al. 2020, "Rethinking
Few-Shot Image Classification: a Good Embedding Is All You Need?"): L2-normalised features, scikit-learn's
multinomial L2-regularised logistic regression fitted by L-BFGS (deterministic)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.evaluation.heads.base import Head, HeadContext, register_head


@register_head("logistic")
class LogisticRegressionHead(Head):
    """Multinomial logistic regression fitted on the support set; scores are the log-probabilities.

    ``C`` is the inverse L2 regularisation strength (scikit-learn's; RFS uses 1.0), ``normalize`` L2-normalises
    the features first (RFS: yes), ``max_iter`` caps L-BFGS's iterations."""

    def __init__(self, C: float = 1.0, normalize: bool = True, max_iter: int = 1000) -> None:
        if not C > 0:
            raise ValueError(f"logistic C must be positive, got {C}")
        if max_iter < 1:
            raise ValueError(f"logistic max_iter must be at least 1, got {max_iter}")
        self.C, self.normalize, self.max_iter = C, normalize, max_iter

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        from sklearn.linear_model import LogisticRegression  # scikit-learn: imported when this head runs

        if self.normalize:
            support, query = F.normalize(support.float(), dim=1), F.normalize(query.float(), dim=1)
        labels = support_labels.cpu().numpy()
        present = np.unique(labels)
        if len(present) != ways:
            raise ValueError(f"logistic regression needs support images of every class 0..{ways - 1}, got classes "
                             f"{present.tolist()}")
        classifier = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="lbfgs", random_state=0)
        classifier.fit(support.double().cpu().numpy(), labels)
        log_proba = classifier.predict_log_proba(query.double().cpu().numpy())  # columns: classes 0..ways-1 in order
        return torch.from_numpy(log_proba).to(query.device, torch.float32)
