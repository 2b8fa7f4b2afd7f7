"""Dirichlet-imbalanced query sets (Veilleux et al. 2021) as an option of `EpisodeSampler`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from episodes import EpisodeSampler
from episodes.sampler import largest_remainders
from episodes.torch import EpisodeBatchSampler

LABELS = np.repeat(np.arange(40), 60)


def sampler(alpha: float | None = 2.0, seed: int = 3, labels: np.ndarray = LABELS, **options) -> EpisodeSampler:
    return EpisodeSampler(labels, options.pop("ways", 5), options.pop("shots", 1), options.pop("queries", 15),
                          seed=seed, num_episodes=500, query_dirichlet=alpha, **options)


def test_counts_sum_to_the_balanced_total_and_vary() -> None:
    episodes = sampler().episodes(np.arange(200))
    counts = np.stack([e.query_counts for e in episodes])
    assert np.all(counts.sum(1) == 75)
    assert counts.std(1).mean() > 3  # imbalanced, not 15 each
    for e in episodes[:20]:
        assert len(e.query) == 75 and len(e.support) == 5
        assert np.array_equal(LABELS[e.query], e.classes[e.query_labels])  # each query is of its labelled class
        assert len(set(e.indices().tolist())) == 80  # support and query disjoint, no repeats
        assert np.all(np.diff(e.query_labels) >= 0)  # class-major


def test_same_seed_same_episodes_random_access() -> None:
    a, b = sampler(), sampler()
    together = a.episodes(np.arange(50))
    for index in (0, 7, 49):
        alone = b.episode(index)
        assert np.array_equal(alone.query, together[index].query)
        assert np.array_equal(alone.query_labels, together[index].query_labels)
    other = sampler(seed=4).episodes(np.arange(50))
    assert any(not np.array_equal(x.query_counts, y.query_counts) for x, y in zip(together, other))


def test_classes_and_support_are_the_balanced_ones() -> None:
    imbalanced, balanced = sampler().episodes(np.arange(30)), sampler(None).episodes(np.arange(30))
    for x, y in zip(imbalanced, balanced):
        assert np.array_equal(x.classes, y.classes)
        assert np.array_equal(x.support, y.support)


def test_marginals_follow_the_dirichlet() -> None:
    """Without capacity limits, one class's share of the queries is Beta(alpha, (ways - 1) alpha) (up to rounding)."""
    roomy = np.repeat(np.arange(10), 400)
    episodes = sampler(alpha=2.0, queries=40, labels=roomy).episodes(np.arange(500))
    shares = np.array([e.query_counts[0] for e in episodes]) / 200
    assert stats.kstest(shares, stats.beta(2.0, 8.0).cdf).pvalue > 1e-3


def test_balanced_queries_property_refuses_an_imbalanced_episode() -> None:
    episode = next(e for e in sampler().episodes(np.arange(10)) if len(set(e.query_counts.tolist())) > 1)
    with pytest.raises(ValueError, match="query_counts"):
        episode.queries
    assert sampler(None).episode(0).queries == 15


def test_small_classes_redraw_until_the_counts_fit() -> None:
    small = np.repeat(np.arange(30), 20)  # Omniglot-sized classes: 19 items beyond one shot
    episodes = sampler(labels=small).episodes(np.arange(100))
    assert max(int(e.query_counts.max()) for e in episodes) <= 19
    assert all(e.query_counts.sum() == 75 for e in episodes)


def test_impossible_counts_raise_clearly() -> None:
    tiny = np.repeat(np.arange(10), 16)  # 15 items beyond the shot: only 15 queries each would fit
    with pytest.raises(ValueError, match="Dirichlet.*fits its classes"):
        sampler(labels=tiny).episode(0)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_concentration_is_refused(alpha) -> None:
    with pytest.raises(ValueError, match="query_dirichlet"):
        sampler(alpha=alpha)


def test_largest_remainders() -> None:
    assert largest_remainders(np.array([0.5, 0.25, 0.25]), 3).tolist() == [1, 1, 1]  # remainders .5, .75, .75
    assert largest_remainders(np.array([0.6, 0.3, 0.1]), 4).tolist() == [2, 1, 1]
    assert largest_remainders(np.array([0.2, 0.2, 0.2, 0.2, 0.2]), 75).tolist() == [15] * 5
    assert largest_remainders(np.array([0.0, 1.0]), 7).tolist() == [0, 7]


def test_pytorch_batch_sampler_refuses_dirichlet_queries() -> None:
    with pytest.raises(ValueError, match="Dirichlet"):
        EpisodeBatchSampler(sampler())
