"""Meta-Dataset's episode procedure (`episodes.metadataset`): the formulas on every drawn episode, the
distribution they imply (scipy tests over many episodes, against the uniform draws the paper specifies
and against a plain transcription of the paper's procedure with numpy's own generator), random
access, determinism across processes and shards, and bad input."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from episodes import Episode, MetaDatasetSampler, save_episodes

ALPHA = 1e-3  # seeds are fixed, so each statistical test is deterministic; this only sets its strictness
LOG_HALF, LOG_TWO = math.log(0.5), math.log(2)


def imbalanced_labels(num_classes: int = 80, seed: int = 0) -> np.ndarray:
    """Shuffled labels with class sizes 2..149 (log-spread) and non-contiguous class ids."""
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.round(np.geomspace(2, 149, num_classes)).astype(int), return_counts=False)
    sizes = np.resize(sizes, num_classes)
    labels = np.repeat(500 + 3 * np.arange(num_classes), sizes)
    return labels[rng.permutation(len(labels))]


def episode_bytes(episode: Episode) -> bytes:
    return b"".join(np.ascontiguousarray(a, dtype=np.int64).tobytes()
                    for a in (episode.classes, episode.support, episode.support_labels, episode.query,
                              episode.query_labels))


def digest(episodes: list[Episode]) -> str:
    hasher = hashlib.sha256()
    for episode in sorted(episodes, key=lambda e: e.index):
        hasher.update(episode_bytes(episode))
    return hasher.hexdigest()


def reference_episode(rng: np.random.Generator, class_sizes: np.ndarray, *, min_ways=5, max_ways=50,
                      max_num_query=10, max_support_set_size=500, contrib=100,
                      min_log_weight=LOG_HALF, max_log_weight=LOG_TWO) -> tuple[int, int, int, np.ndarray]:
    """The paper's procedure transcribed step by step with numpy's generator: (ways, q, |S|, shots per class)."""
    ways = int(rng.integers(min_ways, min(max_ways, len(class_sizes)) + 1))
    sizes = class_sizes[rng.choice(len(class_sizes), ways, replace=False)]
    q = min(max_num_query, int((sizes // 2).min()))
    remaining = sizes - q
    beta = 1.0 - rng.random()  # U(0, 1]
    budget = int(min(max_support_set_size, sum(math.ceil(beta * min(contrib, r)) for r in remaining)))
    weights = sizes * np.exp(rng.uniform(min_log_weight, max_log_weight, ways))
    shares = weights / weights.sum()
    shots = np.minimum(np.floor(shares * (budget - ways)).astype(int) + 1, remaining)
    return ways, q, budget, shots


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return imbalanced_labels()


@pytest.fixture(scope="module")
def big_draw(labels):
    """6,000 episodes of the default procedure (drawn once, vectorised)."""
    sampler = MetaDatasetSampler(labels, seed=2026)
    return sampler, sampler.draw(np.arange(6000))


# --- structure and formulas ----------------------------------------------------------------------

def test_defaults_are_the_papers(labels):
    sampler = MetaDatasetSampler(labels)
    assert sampler.ways_range == (5, 50) and sampler.max_num_query == 10
    assert sampler.max_support_set_size == 500 and sampler.max_support_size_contrib_per_class == 100
    assert sampler.min_log_weight == LOG_HALF and sampler.max_log_weight == LOG_TWO
    assert sampler.queries is None  # per episode, not per sampler


def test_every_episode_follows_the_formulas(labels, big_draw):
    sampler, draw = big_draw
    sizes_of = dict(zip(sampler.class_ids.tolist(), sampler.class_sizes.tolist()))
    episodes = draw.episodes()
    starts = draw.row_starts
    for e, episode in enumerate(episodes[:1500]):
        ways = episode.ways
        assert ways == draw.ways[e] and len(set(episode.classes.tolist())) == ways
        sizes = np.array([sizes_of[c] for c in episode.classes.tolist()])
        rows = slice(starts[e], starts[e] + ways)
        # Items: right classes, class-major, support and query disjoint.
        assert np.array_equal(labels[episode.support], episode.classes[episode.support_labels])
        assert np.array_equal(labels[episode.query], episode.classes[episode.query_labels])
        assert len(np.unique(episode.indices())) == len(episode.indices())
        # q = min(max_num_query, min_c floor(|c| / 2)), the same for every class.
        q = min(10, int((sizes // 2).min()))
        assert np.array_equal(np.bincount(episode.query_labels, minlength=ways), np.full(ways, q))
        assert episode.queries == q == draw.queries[e]
        # |S| in [ways, 500], and it bounds the support set.
        budget = int(draw.budget[e])
        assert ways <= budget <= 500 and len(episode.support) <= budget
        # k_c = min(floor(R_c (|S| - ways)) + 1, |c| - q), R_c proportional to |c| exp(alpha_c).
        alpha = draw.log_weights[rows]
        assert np.all((LOG_HALF <= alpha) & (alpha <= LOG_TWO))
        shares = sizes * np.exp(alpha) / (sizes * np.exp(alpha)).sum()
        expected = np.minimum(np.floor(shares * (budget - ways)).astype(int) + 1, sizes - q)
        assert np.array_equal(episode.support_counts, expected)
        assert episode.support_counts.min() >= 1


def test_budget_is_the_capped_sum_of_ceilings(big_draw):
    """|S| = min(500, sum_c ceil(beta min(100, |c| - q))) for one beta in (0, 1]: the beta that the
    budget implies must fit every class's ceiling at once (checked by bracketing beta)."""
    sampler, draw = big_draw
    sizes_of = dict(zip(sampler.class_ids.tolist(), sampler.class_sizes.tolist()))
    for e in range(0, 6000, 7):
        ways, q, budget = int(draw.ways[e]), int(draw.queries[e]), int(draw.budget[e])
        contributions = np.minimum(100, np.array([sizes_of[c] for c in draw.classes[e, :ways].tolist()]) - q)

        def total(beta: float) -> int:
            return int(np.ceil(beta * contributions).sum())

        assert total(1.0) >= budget  # beta <= 1 ...
        if budget < 500:  # ... and some beta in (0, 1] gives exactly this sum
            grid = np.linspace(1e-9, 1.0, 20001)
            sums = np.ceil(grid[:, None] * contributions[None, :]).sum(axis=1)
            assert budget in sums


def test_imbalanced_episode_has_no_single_shots(big_draw):
    _, draw = big_draw
    episode = next(e for e in draw.episodes()[:50] if len(set(e.support_counts.tolist())) > 1)
    with pytest.raises(ValueError, match=rf"episode {episode.index} is imbalanced \(support items per class"):
        _ = episode.shots


# --- the distribution ----------------------------------------------------------------------------

def test_ways_are_uniform_over_their_range(big_draw):
    _, draw = big_draw
    counts = np.bincount(draw.ways, minlength=51)[5:]
    assert counts.sum() == 6000 and np.bincount(draw.ways)[:5].sum() == 0
    assert stats.chisquare(counts).pvalue > ALPHA


def test_ways_are_capped_by_the_classes_available():
    labels = np.repeat(np.arange(12), 30)
    draw = MetaDatasetSampler(labels, seed=4).draw(np.arange(2000))
    counts = np.bincount(draw.ways, minlength=13)
    assert counts[:5].sum() == 0 and counts.sum() == 2000 and len(counts) == 13
    assert stats.chisquare(counts[5:]).pvalue > ALPHA


def test_log_weights_are_uniform_and_independent_of_the_episode(big_draw):
    _, draw = big_draw
    alpha = draw.log_weights
    assert stats.kstest(alpha, stats.uniform(LOG_HALF, LOG_TWO - LOG_HALF).cdf).pvalue > ALPHA
    # The first class's weight does not depend on the ways drawn.
    first = alpha[draw.row_starts]
    small, large = first[draw.ways <= 27], first[draw.ways > 27]
    assert stats.ks_2samp(small, large).pvalue > ALPHA


def test_log_shares_follow_the_log_uniform_weights():
    """Output only: with equal class sizes and a large budget, log k_c - mean log k_c is the uniform
    alpha_c - mean alpha of the paper (up to flooring), so it matches that law by a KS test."""
    labels = np.repeat(np.arange(40), 1000)
    sampler = MetaDatasetSampler(labels, min_ways=5, max_ways=5, seed=8)
    draw = sampler.draw(np.arange(4000))
    assert np.all(draw.queries == 10)
    room = draw.budget - 5
    keep = np.repeat(room >= 400, 5)  # shares of >= 400 items: the floor moves a log-share by < 1 %
    counts = draw.support_counts.reshape(-1, 5)[keep.reshape(-1, 5)[:, 0]]
    log_counts = np.log(counts - 0.5)  # k_c - 1 + 1/2: the middle of the floor's interval
    observed = (log_counts - log_counts.mean(axis=1, keepdims=True)).reshape(-1)
    rng = np.random.default_rng(0)
    alpha = rng.uniform(LOG_HALF, LOG_TWO, (20000, 5))
    reference = (alpha - alpha.mean(axis=1, keepdims=True)).reshape(-1)
    assert len(observed) > 1000
    assert stats.ks_2samp(observed, reference).pvalue > ALPHA
    spread = log_counts.max(axis=1) - log_counts.min(axis=1)
    assert spread.max() <= 2 * LOG_TWO + 0.02  # within an episode, shares differ by at most 4x


def test_beta_is_uniform_on_the_unit_interval():
    """Output only: classes of 30 (q = 10, 20 left), fixed ways and no cap: |S| / ways = ceil(20 beta)
    is uniform on 1..20 exactly when beta is uniform on (0, 1]."""
    labels = np.repeat(np.arange(25), 30)
    draw = MetaDatasetSampler(labels, min_ways=10, max_ways=10, seed=3).draw(np.arange(4000))
    assert np.all(draw.queries == 10) and np.all(draw.budget % 10 == 0)
    counts = np.bincount(draw.budget // 10, minlength=21)
    assert counts[0] == 0 and counts[1:].sum() == 4000
    assert stats.chisquare(counts[1:]).pvalue > ALPHA


def test_queries_are_at_their_cap(big_draw):
    sampler, draw = big_draw
    sizes_of = dict(zip(sampler.class_ids.tolist(), sampler.class_sizes.tolist()))
    smallest = np.array([min(sizes_of[c] for c in draw.classes[e, :draw.ways[e]].tolist()) for e in range(6000)])
    assert np.array_equal(draw.queries, np.minimum(10, smallest // 2))
    assert 0 < (draw.queries == 10).mean() < 1  # both the cap and the half-class limit are reached


def test_classes_and_items_are_uniform(labels, big_draw):
    sampler, draw = big_draw
    picked = np.concatenate([draw.classes[e, :draw.ways[e]] for e in range(6000)])
    counts = np.array([(picked == c).sum() for c in sampler.class_ids])
    assert stats.chisquare(counts).pvalue > ALPHA
    # Items of one large class: every item equally likely (support and query together).
    big_class = int(sampler.class_ids[np.argmax(sampler.class_sizes)])
    items = np.concatenate([e.indices() for e in draw.episodes()])
    chosen = items[labels[items] == big_class]
    members = np.flatnonzero(labels == big_class)
    assert stats.chisquare(np.array([(chosen == m).sum() for m in members])).pvalue > ALPHA


def test_matches_a_plain_transcription_of_the_paper(labels, big_draw):
    """Two-sample tests against the paper's procedure run with numpy's generator on the same class sizes."""
    sampler, draw = big_draw
    rng = np.random.default_rng(123)
    reference = [reference_episode(rng, sampler.class_sizes) for _ in range(6000)]
    ways, queries, budget = (np.array([r[i] for r in reference]) for i in range(3))
    shots = np.concatenate([r[3] for r in reference])
    table = np.array([np.bincount(draw.ways, minlength=51)[5:], np.bincount(ways, minlength=51)[5:]])
    assert stats.chi2_contingency(table).pvalue > ALPHA
    assert stats.ks_2samp(draw.budget, budget).pvalue > ALPHA
    assert stats.ks_2samp(draw.queries, queries).pvalue > ALPHA
    assert stats.ks_2samp(draw.support_counts, shots).pvalue > ALPHA
    ours_total = np.add.reduceat(draw.support_counts, draw.row_starts)
    theirs_total = np.array([r[3].sum() for r in reference])
    assert stats.ks_2samp(ours_total, theirs_total).pvalue > ALPHA
    assert np.all(ours_total <= draw.budget) and np.all(theirs_total <= budget)


# --- random access, processes and shards ---------------------------------------------------------

def test_random_access_matches_iteration_and_any_chunking(labels):
    sampler = MetaDatasetSampler(labels, seed=5, num_episodes=200)
    streamed = list(sampler.iterate(chunk=7))
    assert [e.index for e in streamed] == list(range(200))
    assert digest(streamed) == digest(sampler.episodes(range(200)))
    for i in (0, 6, 7, 199):
        assert episode_bytes(sampler.episode(i)) == episode_bytes(streamed[i])
    together = sampler.episodes([150, 3, 77])
    assert [episode_bytes(e) for e in together] == [episode_bytes(streamed[i]) for i in (150, 3, 77)]
    assert episode_bytes(sampler.episode(8)) != episode_bytes(sampler.episode(9))
    other_seed = MetaDatasetSampler(labels, seed=6, num_episodes=200)
    assert digest(other_seed.episodes(range(50))) != digest(streamed[:50])


SHARD_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from tests.episodes.test_metadataset import imbalanced_labels, episode_bytes
from episodes import MetaDatasetSampler
sampler = MetaDatasetSampler(imbalanced_labels(), seed=2**63 + 17, num_episodes={count})
for episode in sampler.iterate(shard={shard}, num_shards={shards}, chunk=13):
    print(episode.index, episode_bytes(episode).hex())
"""


def run_shard(shard: int, shards: int, count: int) -> dict[int, bytes]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = SHARD_SCRIPT.format(root=root, count=count, shard=shard, shards=shards)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pairs = (line.split() for line in result.stdout.splitlines())
    return {int(index): bytes.fromhex(data) for index, data in pairs}


def test_two_processes_and_disjoint_shards_give_one_process_episodes():
    count = 600
    here = MetaDatasetSampler(imbalanced_labels(), seed=2**63 + 17, num_episodes=count)
    expected = hashlib.sha256(b"".join(episode_bytes(e) for e in here.iterate())).hexdigest()
    whole = run_shard(0, 1, count)  # another process, one shard
    shards = [run_shard(s, 3, count) for s in range(3)]  # three more processes, disjoint shards
    assert sorted(whole) == list(range(count))
    assert sum(len(s) for s in shards) == count and set().union(*shards) == set(range(count))
    merged = {index: data for shard in shards for index, data in shard.items()}
    for episodes in (whole, merged):
        assert hashlib.sha256(b"".join(episodes[i] for i in range(count))).hexdigest() == expected


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(min_ways=1), r"min_ways must be >= 2, got 1"),
        (dict(min_ways=0), r"min_ways must be a positive int, got 0"),
        (dict(min_ways=6, max_ways=5), r"max_ways must be >= min_ways = 6, got 5"),
        (dict(max_num_query=2.5), r"max_num_query must be a positive int, got 2.5"),
        (dict(max_support_set_size=True), r"max_support_set_size must be a positive int, got True"),
        (dict(max_support_set_size=7), r"max_support_set_size=7 cannot give one support item to each of up to 50"),
        (dict(max_support_size_contrib_per_class=0), r"max_support_size_contrib_per_class must be a positive int"),
        (dict(min_log_weight=1.0, max_log_weight=0.0), r"min_log_weight <= max_log_weight must be finite numbers"),
        (dict(max_log_weight=float("nan")), r"min_log_weight <= max_log_weight must be finite numbers"),
        (dict(min_ways=81, max_ways=90), r"min_ways=81 needs 81 classes but only 80 are available"),
    ],
)
def test_bad_parameters_raise_naming_the_value(labels, arguments, message):
    with pytest.raises(ValueError, match=message):
        MetaDatasetSampler(labels, **arguments)


def test_classes_of_one_item_raise_or_are_excluded():
    labels = np.concatenate([np.repeat(np.arange(6), 5), [77]])
    with pytest.raises(ValueError, match=r"1 classes have fewer than one support \+ one query item = 2 items "
                                         r"\(class 77: 1 items\)"):
        MetaDatasetSampler(labels)
    with pytest.warns(UserWarning, match="excluded from episodes"):
        sampler = MetaDatasetSampler(labels, too_small="exclude")
    assert sampler.excluded == {77: 1} and sampler.num_classes == 6
    assert all(77 not in e.classes for e in sampler.episodes(range(50)))


def test_classes_of_two_items_give_one_support_and_one_query():
    labels = np.repeat(np.arange(8), 2)
    for episode in MetaDatasetSampler(labels, seed=1).episodes(range(30)):
        assert episode.queries == 1 and np.all(episode.support_counts == 1)


def test_bad_episode_indices(labels):
    sampler = MetaDatasetSampler(labels, num_episodes=5)
    with pytest.raises(IndexError, match="episode index 5 out of range for num_episodes=5"):
        sampler.episode(5)
    with pytest.raises(IndexError, match="episode indices must be >= 0, got -1"):
        sampler.episodes([-1])
    assert len(sampler.draw([])) == 0 and sampler.episodes([]) == []


def test_episode_lists_refuse_imbalanced_episodes(tmp_path):
    labels = imbalanced_labels()
    episode = next(e for e in MetaDatasetSampler(labels, seed=1).episodes(range(20))
                   if len(set(e.support_counts.tolist())) > 1)
    with pytest.raises(ValueError, match=rf"episode {episode.index} is imbalanced .*hold only balanced episodes"):
        save_episodes(tmp_path / "list.json", [episode], labels=labels,
                      class_names={int(c): str(c) for c in set(labels)}, item_ids=[str(i) for i in range(len(labels))])
    assert not (tmp_path / "list.json").exists()
