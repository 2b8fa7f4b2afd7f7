"""LaplacianShot: kNN affinity, bound updates, and the Laplacian term's help on clustered queries."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.heads import HEADS
from fewshot.evaluation.heads.laplacianshot import bound_updates, knn_affinity
from tests.evaluation.heads.transductive_checks import SHIFTED, accuracy, scores
from tests.support.planted_features import planted_episode

SEEDS = range(10)


def test_transductive_beats_chance_and_is_deterministic() -> None:
    assert HEADS["laplacianshot"].transductive
    planted = planted_episode(shots=1, seed=4)
    first, second = scores("laplacianshot", planted), scores("laplacianshot", planted)
    assert first.shape == (75, 5) and torch.equal(first, second) and torch.isfinite(first).all()
    assert (first.argmax(1) == planted.query_labels).float().mean() > 0.6


def test_laplacian_term_helps_on_clustered_queries() -> None:
    plain = accuracy("laplacianshot", SEEDS, SHIFTED, lam=0.0, rectify=False)
    assert accuracy("laplacianshot", SEEDS, SHIFTED, rectify=False) > plain + 0.02
    assert accuracy("laplacianshot", SEEDS, SHIFTED) > plain + 0.02


def test_knn_affinity_links_each_point_to_its_nearest_others() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    affinity = knn_affinity(points, knn=2)  # one neighbour each, the point itself not counted
    assert affinity.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert knn_affinity(points, knn=10).sum(1).tolist() == [3, 3, 3, 3]  # capped at the other points


def test_without_neighbours_the_assignments_are_the_softmax_of_distances() -> None:
    unary = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    result = bound_updates(unary, torch.zeros(6, 6), lam=0.7, iterations=20)
    torch.testing.assert_close(result.softmax(1), (-unary).softmax(1))


@pytest.mark.parametrize("arguments", [{"knn": 0}, {"knn": 2.5}, {"lam": -0.1}, {"iterations": 0},
                                       {"epsilon": 0.0}])
def test_bad_arguments_are_refused(arguments) -> None:
    with pytest.raises(ValueError, match=next(iter(arguments))):
        HEADS["laplacianshot"](**arguments)
