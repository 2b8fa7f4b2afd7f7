"""Shared checks of the transductive heads' tests: accuracy of a head over planted episodes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fewshot.evaluation.heads import HeadContext, build_head
from fewshot.learners.protonet import PrototypicalLearner
from tests.support.planted_features import PlantedEpisode, planted_episode


def context(seed: int = 0) -> HeadContext:
    return HeadContext(learner=PrototypicalLearner(), generator=torch.Generator().manual_seed(seed))


def scores(name: str, planted: PlantedEpisode, **arguments: Any) -> torch.Tensor:
    """The head's scores on one planted episode, under no_grad as the evaluator calls it."""
    with torch.no_grad():
        return build_head(name, **arguments).logits(planted.support, planted.support_labels, planted.query,
                                                    planted.ways, context())


def accuracy(name: str, seeds: Iterable[int], episode: dict[str, Any], **arguments: Any) -> float:
    """Mean query accuracy of head ``name`` over planted episodes of ``seeds``."""
    total, count = 0.0, 0
    for seed in seeds:
        planted = planted_episode(seed=seed, **episode)
        total += (scores(name, planted, **arguments).argmax(1) == planted.query_labels).float().mean().item()
        count += 1
    return total / count


#: 5-way 1-shot episodes whose queries are moved away from the support set (a domain shift) and whose clusters
#: overlap: where using the query set should help.
SHIFTED = {"ways": 5, "shots": 1, "queries": 15, "dim": 16, "noise": 0.7, "shift": 2.0}
