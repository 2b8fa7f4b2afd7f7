"""Transductive fine-tuning (Dhillon et al. 2020) of a classifier on frozen embeddings."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.heads import HEADS
from tests.evaluation.heads.transductive_checks import SHIFTED, accuracy, scores
from tests.support.planted_features import planted_episode

SEEDS = range(10)


def test_beats_chance_and_is_deterministic() -> None:
    assert HEADS["transductive-finetuning"].transductive
    planted = planted_episode(shots=1, seed=8)
    first, second = scores("transductive-finetuning", planted), scores("transductive-finetuning", planted)
    assert first.shape == (75, 5) and torch.equal(first, second)
    assert (first.argmax(1) == planted.query_labels).float().mean() > 0.6


STRONGER = {"temperature": 10.0, "lr": 1e-3}  # the paper's rate barely moves a classifier on frozen embeddings


def test_query_entropy_helps_under_a_shift() -> None:
    start = accuracy("transductive-finetuning", SEEDS, SHIFTED, steps=0, **STRONGER)
    tuned = accuracy("transductive-finetuning", SEEDS, SHIFTED, **STRONGER)
    assert tuned > start + 0.01
    assert accuracy("transductive-finetuning", SEEDS, SHIFTED, entropy_weight=0.0, **STRONGER) < tuned


def test_paper_defaults_stay_near_the_start() -> None:
    planted = planted_episode(shots=1, seed=10, **{k: v for k, v in SHIFTED.items() if k != "shots"})
    start = scores("transductive-finetuning", planted, steps=0)
    assert (scores("transductive-finetuning", planted) - start).abs().max() < 0.05


def test_starts_as_the_cosine_class_mean() -> None:
    planted = planted_episode(shots=1, seed=9)
    expected = torch.nn.functional.normalize(planted.query, dim=1) @ torch.nn.functional.normalize(
        planted.support, dim=1).T
    torch.testing.assert_close(scores("transductive-finetuning", planted, steps=0), expected)


@pytest.mark.parametrize("arguments", [{"steps": -1}, {"lr": 0}, {"entropy_weight": -1.0}, {"temperature": 0.0},
                                       {"classifier": "cosine"}])
def test_bad_arguments_are_refused(arguments) -> None:
    with pytest.raises(ValueError, match=next(iter(arguments))):
        HEADS["transductive-finetuning"](**arguments)
