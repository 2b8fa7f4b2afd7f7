"""Metric learners (losses): each turns an episode's embeddings into a loss; all classify by nearest
prototype except the learned comparators (matching networks' attention, the relation network's relation
module), which have their own rule (`Learner.episode_logits`). Importing this package registers the built-in
learners in ``LEARNERS``."""

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
# Registration order is the order registries list names in (CLI choices, error messages): the three
# episodic learners first, then the proxy and pair losses, then the learned comparators.
from fewshot.learners.protonet import PrototypicalLearner
from fewshot.learners.siamese import SiameseLearner, contrastive_loss
from fewshot.learners.triplet import TripletLearner
from fewshot.learners.normface import NormFaceLearner
from fewshot.learners.cosface import CosFaceLearner
from fewshot.learners.arcface import ArcFaceLearner
from fewshot.learners.sphereface import SphereFaceLearner
from fewshot.learners.proxy_nca import ProxyNCALearner
from fewshot.learners.proxy_anchor import ProxyAnchorLearner
from fewshot.learners.lifted_structure import LiftedStructureLearner, lifted_structure_loss
from fewshot.learners.n_pair import NPairLearner, n_pair_loss
from fewshot.learners.multi_similarity import MultiSimilarityLearner, multi_similarity_loss
from fewshot.learners.circle import CircleLearner, ClassCircleLearner, circle_loss
from fewshot.learners.proxies import CosineSoftmaxLearner, ProxyLearner
from fewshot.learners.matching import MatchingLearner
from fewshot.learners.relation import RelationLearner

__all__ = [
    "LEARNERS",
    "ArcFaceLearner",
    "CircleLearner",
    "ClassCircleLearner",
    "CosFaceLearner",
    "CosineSoftmaxLearner",
    "EpisodeEmbeddings",
    "Learner",
    "LearnerOutput",
    "LiftedStructureLearner",
    "MatchingLearner",
    "MultiSimilarityLearner",
    "NPairLearner",
    "NormFaceLearner",
    "PrototypicalLearner",
    "ProxyAnchorLearner",
    "ProxyLearner",
    "ProxyNCALearner",
    "RelationLearner",
    "SiameseLearner",
    "SphereFaceLearner",
    "TripletLearner",
    "build_learner",
    "circle_loss",
    "contrastive_loss",
    "lifted_structure_loss",
    "multi_similarity_loss",
    "n_pair_loss",
    "prototype_logits",
    "prototypes",
    "register_learner",
]
