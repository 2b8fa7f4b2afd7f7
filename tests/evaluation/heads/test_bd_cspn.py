"""BD-CSPN (transductive) and its inductive prototype rectification."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.heads import HEADS
from fewshot.evaluation.heads.bd_cspn import rectified_prototypes, weighted_class_means
from tests.evaluation.heads.transductive_checks import SHIFTED, accuracy, scores
from tests.support.planted_features import planted_episode

SEEDS = range(10)


def test_registered_with_their_kind() -> None:
    assert HEADS["bd-cspn"].transductive and not HEADS["bd-cspn-inductive"].transductive


@pytest.mark.parametrize("name", ["bd-cspn", "bd-cspn-inductive"])
def test_beats_chance_and_is_deterministic(name: str) -> None:
    planted = planted_episode(shots=5, seed=1)
    first, second = scores(name, planted), scores(name, planted)
    assert first.shape == (75, 5) and torch.equal(first, second)
    assert (first.argmax(1) == planted.query_labels).float().mean() > 0.6


def test_query_set_helps_under_a_shift() -> None:
    transductive = accuracy("bd-cspn", SEEDS, SHIFTED)
    assert transductive > accuracy("bd-cspn-inductive", SEEDS, SHIFTED) + 0.03
    assert transductive > accuracy("bd-cspn", SEEDS, SHIFTED, shift=False)


def test_weights_are_a_softmax_within_each_class() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prototypes = weighted_class_means(features, labels, centres, epsilon=1.0)
    weight = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # cos 1 and 0 with class 0's centre
    torch.testing.assert_close(prototypes[0], weight @ features[:2])
    torch.testing.assert_close(prototypes[1], features[2])  # a lone member is its class's prototype


def test_shift_moves_the_query_mean_onto_the_support_mean() -> None:
    planted = planted_episode(shots=2, seed=3, shift=3.0)
    _, shifted = rectified_prototypes(planted.support, planted.support_labels, planted.query, 5)
    torch.testing.assert_close(shifted.mean(0), planted.support.mean(0), rtol=1e-4, atol=1e-5)


def test_one_shot_inductive_rectification_is_the_cosine_class_mean() -> None:
    planted = planted_episode(shots=1, seed=2)
    expected = torch.nn.functional.normalize(planted.query, dim=1) @ torch.nn.functional.normalize(
        planted.support, dim=1).T
    torch.testing.assert_close(scores("bd-cspn-inductive", planted, epsilon=1.0), expected)


@pytest.mark.parametrize("name", ["bd-cspn", "bd-cspn-inductive"])
@pytest.mark.parametrize("epsilon", [0, -1.0, float("nan"), "10"])
def test_bad_epsilon_is_refused(name: str, epsilon) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        HEADS[name](epsilon=epsilon)
