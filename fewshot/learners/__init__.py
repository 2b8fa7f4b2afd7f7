"""Metric learners: each turns an episode's embeddings into a loss and nearest-prototype logits."""

from __future__ import annotations

from torch import nn

from fewshot.learners.base import LearnerOutput, prototype_logits, prototypes
from fewshot.learners.protonet import PrototypicalLearner
from fewshot.learners.siamese import SiameseLearner, contrastive_loss
from fewshot.learners.triplet import TripletLearner

LEARNERS: dict[str, type[nn.Module]] = {
    "protonet": PrototypicalLearner,
    "siamese": SiameseLearner,
    "triplet": TripletLearner,
}


def build_learner(name: str, distance: nn.Module | None = None, **kwargs) -> nn.Module:
    """Build the learner called ``name`` (one of ``LEARNERS``).

    ``distance`` is used by ``protonet`` (default: squared Euclidean). ``siamese`` and ``triplet``
    are defined on the Euclidean distance, so they reject any other ``distance``.
    """
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; valid names: {', '.join(LEARNERS)}")
    if name == "protonet":
        return PrototypicalLearner(distance, **kwargs)
    if distance is not None:
        raise ValueError(
            f"learner {name!r} uses the Euclidean distance and takes no distance module; "
            f"got {type(distance).__name__} (pass distance=None)"
        )
    return LEARNERS[name](**kwargs)


__all__ = [
    "LEARNERS",
    "LearnerOutput",
    "PrototypicalLearner",
    "SiameseLearner",
    "TripletLearner",
    "build_learner",
    "contrastive_loss",
    "prototype_logits",
    "prototypes",
]
