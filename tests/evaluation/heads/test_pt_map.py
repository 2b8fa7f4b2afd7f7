"""PT-MAP: power transform, Sinkhorn assignments and MAP centre updates."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.heads import HEADS
from fewshot.evaluation.heads.pt_map import power_transform, sinkhorn
from tests.evaluation.heads.transductive_checks import SHIFTED, accuracy, scores
from tests.support.planted_features import planted_episode

SEEDS = range(5)
NON_NEGATIVE = {**SHIFTED, "non_negative": True}


def test_beats_chance_and_is_deterministic() -> None:
    assert HEADS["pt-map"].transductive
    planted = planted_episode(shots=1, seed=7, non_negative=True)
    first, second = scores("pt-map", planted), scores("pt-map", planted)
    assert first.shape == (75, 5) and torch.equal(first, second) and torch.isfinite(first).all()
    assert (first.argmax(1) == planted.query_labels).float().mean() > 0.6


def test_map_steps_help_under_a_shift() -> None:
    assert accuracy("pt-map", SEEDS, NON_NEGATIVE) > accuracy("pt-map", SEEDS, NON_NEGATIVE, steps=0) + 0.02


def test_sinkhorn_meets_both_marginals() -> None:
    cost = torch.rand(12, 4, generator=torch.Generator().manual_seed(0))
    plan = sinkhorn(cost, lam=10.0, column_mass=3.0, tolerance=1e-6, iterations=1000)
    torch.testing.assert_close(plan.sum(1), torch.ones(12), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plan.sum(0), torch.full((4,), 3.0), rtol=1e-4, atol=1e-4)


def test_power_transform_clips_negative_values() -> None:
    values = power_transform(torch.tensor([[-4.0, 0.0, 4.0]]), 0.5)
    torch.testing.assert_close(values, torch.tensor([[1e-3, 1e-3, 2.0]]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arguments", [{"power": 0}, {"lam": -1.0}, {"alpha": 0.0}, {"alpha": 1.5}, {"steps": -1},
                                       {"sinkhorn_iterations": 0}])
def test_bad_arguments_are_refused(arguments) -> None:
    with pytest.raises(ValueError, match=next(iter(arguments))):
        HEADS["pt-map"](**arguments)
