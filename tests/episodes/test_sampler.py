"""The numpy core of `episodes`: sampler structure, statistics (scipy), determinism, sharding,
variable and imbalanced episodes, bad input, pairs/triplets and fixed episode lists."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats

from episodes import EpisodeSampler, PairSampler, TripletSampler, load_episodes, read_episode_list, save_episodes

ALPHA = 1e-3  # seeds are fixed, so each statistical test is deterministic; this only sets its strictness


def imbalanced_labels(num_classes: int = 30, seed: int = 0) -> np.ndarray:
    """Shuffled labels with class sizes 10..39 and non-contiguous class ids."""
    rng = np.random.default_rng(seed)
    sizes = 10 + np.arange(num_classes) % 30
    labels = np.repeat(1000 + 7 * np.arange(num_classes), sizes)
    return labels[rng.permutation(len(labels))]


def episodes_digest(sampler: EpisodeSampler, indices: list[int]) -> str:
    digest = hashlib.sha256()
    for episode in sampler.episodes(indices):
        for array in (episode.classes, episode.support, episode.query):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def omniglot_train():
    if not os.environ.get("FEWSHOT_DATA"):
        pytest.skip("FEWSHOT_DATA is unset: no real Omniglot to test on")
    from fewshot.data import load_omniglot

    return load_omniglot(download=False).split("train")


# --- structure ---------------------------------------------------------------------------------

def test_core_imports_numpy_only():
    code = ("import sys, episodes, episodes.sampler, episodes.pairs, episodes.lists; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_episode_structure_and_labels():
    labels = imbalanced_labels()
    sampler = EpisodeSampler(labels, ways=5, shots=3, queries=4, seed=11)
    for episode in sampler.episodes(range(200)):
        assert episode.ways == 5 and episode.shots == 3 and episode.queries == 4
        assert len(set(episode.classes.tolist())) == 5
        assert np.array_equal(labels[episode.support], episode.classes[episode.support_labels])
        assert np.array_equal(labels[episode.query], episode.classes[episode.query_labels])
        assert np.array_equal(episode.support_labels, np.repeat(np.arange(5), 3))
        assert np.array_equal(episode.query_labels, np.repeat(np.arange(5), 4))
        everything = np.concatenate([episode.support, episode.query])
        assert len(np.unique(everything)) == len(everything)  # no repeats, so support and query never overlap
        assert np.array_equal(episode.indices(), everything)


def test_random_access_matches_iteration_and_vectorised_draws():
    sampler = EpisodeSampler(imbalanced_labels(), ways=4, shots=2, queries=2, seed=5, num_episodes=300)
    streamed = list(sampler)
    assert len(streamed) == len(sampler) == 300
    for i in (0, 1, 63, 64, 299):
        single = sampler.episode(i)
        assert single.index == i
        assert np.array_equal(single.support, streamed[i].support)
        assert np.array_equal(single.query, streamed[i].query)
        assert np.array_equal(single.classes, streamed[i].classes)
    # Any grouping of indices into a draw gives the same episodes.
    together = sampler.episodes([250, 3, 7])
    for episode, index in zip(together, (250, 3, 7)):
        alone = sampler.episode(index)
        assert episode.index == index
        assert np.array_equal(episode.support, alone.support) and np.array_equal(episode.query, alone.query)
    assert not np.array_equal(sampler.episode(8).support, sampler.episode(7).support)


def test_seeds_give_different_streams():
    labels = imbalanced_labels()
    first = EpisodeSampler(labels, 5, 1, 5, seed=0)
    second = EpisodeSampler(labels, 5, 1, 5, seed=1)
    assert episodes_digest(first, list(range(20))) != episodes_digest(second, list(range(20)))


def test_determinism_across_processes():
    indices = [0, 1, 2, 999, 10**12]
    code = ("import numpy as np, sys; sys.path.insert(0, {tests!r}); "
            "from test_sampler import imbalanced_labels, episodes_digest; "
            "from episodes import EpisodeSampler; "
            "print(episodes_digest(EpisodeSampler(imbalanced_labels(), (2, 6), (1, 3), 4, seed=2**63 + 17), {indices}))"
            ).format(tests=os.path.dirname(__file__), indices=indices)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = episodes_digest(EpisodeSampler(imbalanced_labels(), (2, 6), (1, 3), 4, seed=2**63 + 17), indices)
    assert result.stdout.strip() == here


def test_shards_are_disjoint_and_cover_the_stream():
    sampler = EpisodeSampler(imbalanced_labels(), 5, 1, 3, seed=9, num_episodes=101)
    stream = [e.index for e in sampler.iterate()]
    assert stream == list(range(101))
    for start in (0, 10):
        for num_shards in (1, 2, 3, 8):
            shards = [[e.index for e in sampler.iterate(start, shard=s, num_shards=num_shards, chunk=7)]
                      for s in range(num_shards)]
            flat = [i for shard in shards for i in shard]
            assert len(flat) == len(set(flat))
            assert sorted(flat) == list(range(start, 101))
            # Round-robin over the shards replays the single-process order exactly.
            interleaved = [shard[t] for t in range(len(shards[0])) for shard in shards if t < len(shard)]
            assert interleaved == list(range(start, 101))


def test_resume_from_start_replays_nothing_and_skips_nothing():
    sampler = EpisodeSampler(imbalanced_labels(), 3, 2, 2, seed=4, num_episodes=50)
    full = list(sampler)
    resumed = list(sampler.iterate(start=37))
    assert [e.index for e in resumed] == list(range(37, 50))
    assert all(np.array_equal(a.query, b.query) for a, b in zip(resumed, full[37:]))


def test_endless_sampler():
    sampler = EpisodeSampler(imbalanced_labels(), 5, 1, 1)
    with pytest.raises(TypeError, match="endless"):
        len(sampler)
    iterator = iter(sampler)
    assert [next(iterator).index for _ in range(130)] == list(range(130))


def test_labels_from_object_attribute():
    class Dataset:
        labels = [0, 0, 1, 1, 2, 2]

    sampler = EpisodeSampler(Dataset(), 3, 1, 1)
    assert sorted(sampler.episode(0).classes.tolist()) == [0, 1, 2]


# --- statistics ----------------------------------------------------------------------------------

def test_classes_and_items_are_drawn_with_expected_frequencies():
    labels = imbalanced_labels()
    ways, shots, queries, count = 5, 2, 3, 6000
    sampler = EpisodeSampler(labels, ways, shots, queries, seed=123)
    draw = sampler.draw(np.arange(count))
    class_ids, sizes = np.unique(labels, return_counts=True)

    # Every class equally often, whatever its size.
    class_counts = np.array([(draw.classes == c).sum() for c in class_ids])
    assert stats.chisquare(class_counts).pvalue > ALPHA
    # Control: the same test rejects a stream that favours large classes by only 10%.
    rng = np.random.default_rng(0)
    weights = np.where(sizes > sizes.mean(), 1.1, 1.0)
    biased = rng.choice(len(class_ids), size=class_counts.sum(), p=weights / weights.sum())
    assert stats.chisquare(np.bincount(biased, minlength=len(class_ids))).pvalue < ALPHA

    # Within a class, every item equally often (expected: class draws x (shots+queries) / class size).
    episodes = draw.episodes()
    support = np.bincount(np.concatenate([e.support for e in episodes]), minlength=len(labels))
    query = np.bincount(np.concatenate([e.query for e in episodes]), minlength=len(labels))
    per_class_draws = dict(zip(class_ids, class_counts))
    class_size = dict(zip(class_ids, sizes))
    draws_of_item = np.array([per_class_draws[c] / class_size[c] for c in labels])
    for observed, per_draw in ((support + query, shots + queries), (support, shots), (query, queries)):
        expected = draws_of_item * per_draw
        assert stats.chisquare(observed, expected, ddof=len(class_ids) - 1).pvalue > ALPHA

    # The position of a class in the episode (its episode label) is uniform and independent of the class.
    table = np.array([[(draw.classes[:, p] == c).sum() for p in range(ways)] for c in class_ids])
    assert stats.chi2_contingency(table).pvalue > ALPHA
    assert stats.chisquare(table.sum(axis=0)).pvalue > ALPHA


def test_variable_ways_and_shots_are_uniform_over_their_ranges():
    labels = imbalanced_labels()
    sampler = EpisodeSampler(labels, ways=(2, 6), shots=(1, 4), queries=2, seed=3)
    episodes = sampler.episodes(range(4000))
    ways = np.array([e.ways for e in episodes])
    shots = np.array([e.shots for e in episodes])
    assert set(ways.tolist()) == {2, 3, 4, 5, 6} and set(shots.tolist()) == {1, 2, 3, 4}
    assert stats.chisquare(np.bincount(ways)[2:]).pvalue > ALPHA
    assert stats.chisquare(np.bincount(shots)[1:]).pvalue > ALPHA
    for episode in episodes[:300]:
        assert len(episode.support) == episode.ways * episode.shots
        assert len(episode.query) == episode.ways * 2
        assert np.array_equal(labels[episode.support], episode.classes[episode.support_labels])
        assert not set(episode.support.tolist()) & set(episode.query.tolist())


def test_large_classes_use_floyd_draws_and_stay_uniform():
    labels = np.repeat(np.arange(6), 500)  # big classes: drawn by Floyd's algorithm
    sampler = EpisodeSampler(labels, 3, 5, 5, seed=8)
    assert not sampler._items_by_keys
    episodes = sampler.episodes(range(3000))
    counts = np.bincount(np.concatenate([e.indices() for e in episodes]), minlength=len(labels))
    class_draws = np.bincount(np.concatenate([e.classes for e in episodes]), minlength=6)
    expected = np.repeat(class_draws * 10 / 500, 500)
    assert stats.chisquare(counts, expected, ddof=5).pvalue > ALPHA
    for episode in episodes[:200]:
        assert len(np.unique(episode.indices())) == 30


# --- imbalance and bad input --------------------------------------------------------------------

def test_small_classes_raise_naming_them():
    labels = np.repeat([0, 1, 2, 3], [10, 3, 10, 4])
    with pytest.raises(ValueError, match=r"class 1: 3 items.*class 3: 4 items"):
        EpisodeSampler(labels, 2, 2, 3)


def test_small_classes_can_be_excluded_explicitly():
    labels = np.repeat([0, 1, 2, 3], [10, 3, 10, 4])
    with pytest.warns(UserWarning, match=r"class 1: 3 items"):
        sampler = EpisodeSampler(labels, 2, 2, 3, too_small="exclude")
    assert sampler.excluded == {1: 3, 3: 4}
    drawn = np.unique(np.concatenate([e.classes for e in sampler.episodes(range(100))]))
    assert drawn.tolist() == [0, 2]


def test_class_subset_restricts_episodes():
    labels = imbalanced_labels()
    novel = [1000, 1007, 1014, 1021, 1028, 1035]
    sampler = EpisodeSampler(labels, 5, 1, 2, classes=novel, seed=1)
    drawn = np.unique(np.concatenate([e.classes for e in sampler.episodes(range(200))]))
    assert drawn.tolist() == novel
    with pytest.raises(ValueError, match=r"classes \[5, 6\]"):
        EpisodeSampler(labels, 2, 1, 1, classes=[1000, 5, 6])
    with pytest.raises(ValueError, match="duplicates"):
        EpisodeSampler(labels, 2, 1, 1, classes=[1000, 1000, 1007])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(ways=31, shots=1, queries=1), r"ways=31 needs 31 classes but only 30"),
        (dict(ways=5, shots=8, queries=3), r"fewer than shots \+ queries = 11 items \(class 1000: 10 items"),
        (dict(ways=0, shots=1, queries=1), r"ways must be >= 1.*got 0"),
        (dict(ways=5, shots=-1, queries=1), r"shots must be >= 1.*got -1"),
        (dict(ways=5, shots=1, queries=0), r"queries must be >= 1.*got 0"),
        (dict(ways=(4, 2), shots=1, queries=1), r"ways.*got \(4, 2\)"),
        (dict(ways=2.5, shots=1, queries=1), r"ways must be a positive int.*2.5"),
        (dict(ways=True, shots=1, queries=1), r"ways must be a positive int.*True"),
        (dict(ways=5, shots=1, queries=(1, 2)), r"queries must be a single int"),
        (dict(ways=5, shots=1, queries=1, seed=-1), r"seed must be an int in \[0, 2\*\*64\), got -1"),
        (dict(ways=5, shots=1, queries=1, num_episodes=0), r"num_episodes must be a positive int or None, got 0"),
        (dict(ways=5, shots=1, queries=1, too_small="drop"), r"too_small must be 'error' or 'exclude', got 'drop'"),
    ],
)
def test_bad_sizes_raise_naming_the_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(imbalanced_labels(), **arguments)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "labels is empty"),
        (np.array([0.0, 1.0, 1.5]), r"labels must be integers, got dtype float64"),
        (["a", "b"], r"labels must be integers, got dtype <U1"),
        (np.zeros((2, 2), dtype=int), r"labels must be 1-D, got shape \(2, 2\)"),
    ],
)
def test_bad_labels_raise(labels, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(labels, 1, 1, 1)


def test_bad_episode_indices_and_shards():
    sampler = EpisodeSampler(imbalanced_labels(), 2, 1, 1, num_episodes=10)
    with pytest.raises(IndexError, match="10 out of range for num_episodes=10"):
        sampler.episode(10)
    with pytest.raises(IndexError, match=">= 0, got -1"):
        sampler.episode(-1)
    with pytest.raises(ValueError, match=r"shard must be in \[0, 2\), got 2"):
        sampler.episode_indices(0, shard=2, num_shards=2)
    with pytest.raises(ValueError, match="start must be a non-negative int, got -3"):
        sampler.episode_indices(-3)


# --- pairs and triplets --------------------------------------------------------------------------

def test_pairs_are_balanced_correct_and_seeded():
    labels = imbalanced_labels()
    sampler = PairSampler(labels, pairs=64, seed=2, num_batches=400)
    batches = list(sampler)
    assert len(batches) == 400
    for batch in batches:
        assert batch.same.sum() == 32
        assert np.array_equal(labels[batch.first] == labels[batch.second], batch.same)
        assert np.all(batch.first != batch.second)
    assert np.array_equal(sampler.batch(17).first, batches[17].first)
    assert not np.array_equal(PairSampler(labels, 64, seed=3).batch(17).first, batches[17].first)
    # Positive pairs use every class equally often; negatives use every class equally often too.
    first = np.concatenate([b.first for b in batches])
    same = np.concatenate([b.same for b in batches])
    class_ids = np.unique(labels)
    positive_classes = np.searchsorted(class_ids, labels[first[same]])
    assert stats.chisquare(np.bincount(positive_classes, minlength=len(class_ids))).pvalue > ALPHA
    negative_classes = np.searchsorted(class_ids, labels[first[~same]])
    assert stats.chisquare(np.bincount(negative_classes, minlength=len(class_ids))).pvalue > ALPHA
    # Positive and negative pairs are mixed within a batch, not in two blocks.
    assert stats.binomtest(int(same[::2].sum()), len(same[::2])).pvalue > ALPHA
    with pytest.raises(ValueError, match="pairs must be even.*got 5"):
        PairSampler(labels, 5)


def test_triplets_are_correct_and_seeded():
    labels = imbalanced_labels()
    sampler = TripletSampler(labels, triplets=50, seed=6)
    for index in range(50):
        batch = sampler.batch(index)
        assert np.all(labels[batch.anchor] == labels[batch.positive])
        assert np.all(batch.anchor != batch.positive)
        assert np.all(labels[batch.anchor] != labels[batch.negative])
    assert np.array_equal(sampler.batch(3).negative, TripletSampler(labels, 50, seed=6).batch(3).negative)
    with pytest.raises(ValueError, match="triplets must be a positive int, got 0"):
        TripletSampler(labels, 0)


# --- real Omniglot and fixed episode lists ------------------------------------------------------

def test_sampler_over_real_omniglot_vinyals_train(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, 5, 1, 15, seed=0)
    assert sampler.num_classes == 4112
    episode = sampler.episode(0)
    names = [omniglot_train.class_names[c] for c in episode.classes]
    assert len(set(names)) == 5
    assert all(omniglot_train.item_ids[i].startswith(names[label] + "/")
               for i, label in zip(episode.query, episode.query_labels))


def test_episode_list_round_trip_on_real_omniglot(omniglot_train, tmp_path):
    sampler = EpisodeSampler(omniglot_train, 5, 1, 15, seed=42, num_episodes=20)
    episodes = list(sampler)
    path = save_episodes(tmp_path / "test-episodes.json", episodes, omniglot_train,
                         metadata={"split": "vinyals/train", "seed": 42})
    document = json.loads(path.read_text())
    assert document["format"] == "episode-list" and document["version"] == 1
    assert document["metadata"] == {"split": "vinyals/train", "seed": 42}
    first = document["episodes"][0]
    assert first["classes"][0] == omniglot_train.class_names[episodes[0].classes[0]]
    assert first["query"][0][0] == omniglot_train.item_ids[episodes[0].query[0]]
    loaded = load_episodes(path, omniglot_train)
    for original, again in zip(episodes, loaded, strict=True):
        assert np.array_equal(original.classes, again.classes)
        assert np.array_equal(original.support, again.support)
        assert np.array_equal(original.query, again.query)
        assert np.array_equal(original.query_labels, again.query_labels)
    assert read_episode_list(path)["episodes"] == document["episodes"]


def test_episode_list_errors_name_unknown_classes_and_items(omniglot_train, tmp_path):
    path = save_episodes(tmp_path / "episodes.json", EpisodeSampler(omniglot_train, 3, 1, 1, seed=1).episodes([0]),
                         omniglot_train)
    document = json.loads(path.read_text())
    document["episodes"][0]["classes"][0] = "Klingon/character01/rot000"
    document["episodes"].append(json.loads(path.read_text())["episodes"][0])
    document["episodes"][1]["query"][2] = ["no-such-image"]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"unknown classes: \['Klingon/character01/rot000'\].*unknown items: \[.*/no-such-image'\]"):
        load_episodes(path, omniglot_train)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="is not an episode list"):
        load_episodes(path, omniglot_train)


def test_episode_list_with_explicit_names(tmp_path):
    labels = np.repeat([0, 1, 2], 4)
    names = {0: "cat", 1: "dog", 2: "emu"}
    item_ids = [f"img{i % 4}" for i in range(12)]  # unique only within a class
    episodes = EpisodeSampler(labels, 2, 1, 2, seed=0).episodes(range(5))
    path = save_episodes(tmp_path / "e.json", episodes, labels=labels, class_names=names, item_ids=item_ids)
    loaded = load_episodes(path, labels=labels, class_names=names, item_ids=item_ids)
    assert all(np.array_equal(a.support, b.support) for a, b in zip(episodes, loaded))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="need labels, class_names and item_ids"):
            load_episodes(path, labels=labels)
