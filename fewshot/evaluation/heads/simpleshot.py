"""SimpleShot (Wang et al. 2019, "SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning"):
transform the features, then nearest class mean by Euclidean distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.evaluation.heads.base import Head, HeadContext, register_head
from fewshot.evaluation.heads.common import class_means

#: The feature transforms of the paper: unnormalised, L2-normalised, centred on the base-class mean then L2-normalised.
NORMS = ("UN", "L2N", "CL2N")


@register_head("simpleshot")
class SimpleShot(Head):
    """Nearest class mean by Euclidean distance after the transform ``norm``: "CL2N" (the default, the paper's
    best: subtract the mean embedding of the base classes, then L2-normalise), "L2N" or "UN". Scores are minus
    the Euclidean distances. Class means are the means of the transformed support features (not re-normalised)."""

    def __init__(self, norm: str = "CL2N") -> None:
        if norm not in NORMS:
            raise ValueError(f"unknown SimpleShot norm {norm!r}; expected one of {', '.join(NORMS)}")
        self.norm = norm
        self.needs_base_mean = norm == "CL2N"

    def transform(self, features: torch.Tensor, context: HeadContext) -> torch.Tensor:
        """`features` ``[n, d]`` under this head's ``norm``."""
        features = features.float()
        if self.norm == "CL2N":
            if context.base_mean is None:
                raise ValueError("simpleshot with norm=CL2N centres on the mean embedding of the checkpoint's training "
                                 "classes, which is unknown here; evaluate a checkpoint (its base classes are known) "
                                 "or use norm=L2N")
            features = features - context.base_mean().to(features.device, features.dtype)
        if self.norm in ("L2N", "CL2N"):
            features = F.normalize(features, dim=1)
        return features

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        centres = class_means(self.transform(support, context), support_labels, ways)
        return -torch.cdist(self.transform(query, context), centres)
