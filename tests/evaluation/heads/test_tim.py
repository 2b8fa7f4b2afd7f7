"""TIM-GD and alpha-TIM: information maximisation over the query set."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.heads import HEADS
from fewshot.evaluation.heads.tim import alpha_entropy, shannon_entropy
from tests.evaluation.heads.transductive_checks import SHIFTED, accuracy, scores
from tests.support.planted_features import planted_episode

SEEDS = range(4)  # 1000 Adam steps an episode: a few episodes only


@pytest.mark.parametrize("name", ["tim-gd", "alpha-tim"])
def test_beats_chance_and_is_deterministic(name: str) -> None:
    assert HEADS[name].transductive
    planted = planted_episode(shots=1, seed=5)
    first, second = scores(name, planted, steps=100), scores(name, planted, steps=100)
    assert first.shape == (75, 5) and torch.equal(first, second)
    assert (first.argmax(1) == planted.query_labels).float().mean() > 0.6


@pytest.mark.parametrize("name", ["tim-gd", "alpha-tim"])
def test_query_set_helps_under_a_shift(name: str) -> None:
    assert accuracy(name, SEEDS, SHIFTED) > accuracy(name, SEEDS, SHIFTED, steps=0) + 0.02


def test_alpha_entropy_tends_to_shannon_and_peaks_at_uniform() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(alpha_entropy(p, 1.0001), shannon_entropy(p), rtol=1e-3, atol=1e-3)
    values = alpha_entropy(p, 5.0)
    assert values[1] > values[0] > 0


def test_runs_under_inference_mode() -> None:
    planted = planted_episode(shots=1, seed=6)
    with torch.inference_mode():
        result = HEADS["tim-gd"](steps=3).logits(planted.support, planted.support_labels, planted.query, 5, None)
    assert result.shape == (75, 5)


@pytest.mark.parametrize("arguments", [{"temperature": 0}, {"steps": -1}, {"lr": 0.0}, {"ce_weight": -1.0},
                                       {"similarity": "manhattan"}])
def test_bad_arguments_are_refused(arguments) -> None:
    with pytest.raises(ValueError, match=next(iter(arguments))):
        HEADS["tim-gd"](**arguments)


@pytest.mark.parametrize("alpha", [1.0, 0.0, -2.0])
def test_bad_alpha_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        HEADS["alpha-tim"](alpha=alpha)


@pytest.mark.parametrize("name", ["tim-gd", "alpha-tim"])
def test_closed_form_gradient_matches_autograd(name: str) -> None:
    head = HEADS[name](steps=30, lr=1e-2)
    planted = planted_episode(shots=2, seed=12)
    support, query = (torch.nn.functional.normalize(t, dim=1) for t in (planted.support, planted.query))
    weights = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)).requires_grad_()
    head.loss(support, planted.support_labels, query, weights).backward()
    torch.testing.assert_close(head.gradient(support, planted.support_labels, query, weights.detach()), weights.grad,
                               rtol=1e-4, atol=1e-6)
    closed = head.fitted_weights(support, planted.support_labels, query, 5)
    with torch.enable_grad():
        reference = head.fitted_weights(support, planted.support_labels, query, 5, closed_form=False)
    torch.testing.assert_close(closed, reference, rtol=1e-3, atol=2e-4)  # Adam divides by tiny gradients
