"""Metric learners (losses): each turns an episode's embeddings into a loss; all classify by nearest
prototype. Importing this package registers the built-in learners in ``LEARNERS``."""

from __future__ import annotations

from fewshot.learners.base import (
    LEARNERS,
    EpisodeEmbeddings,
    Learner,
    LearnerOutput,
    build_learner,
    prototype_logits,
    prototypes,
    register_learner,
)
from fewshot.learners.protonet import PrototypicalLearner
from fewshot.learners.siamese import SiameseLearner, contrastive_loss
from fewshot.learners.triplet import TripletLearner

__all__ = [
    "LEARNERS",
    "EpisodeEmbeddings",
    "Learner",
    "LearnerOutput",
    "PrototypicalLearner",
    "SiameseLearner",
    "TripletLearner",
    "build_learner",
    "contrastive_loss",
    "prototype_logits",
    "prototypes",
    "register_learner",
]
