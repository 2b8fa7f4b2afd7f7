"""Several sources (`episodes.sources`): the source of each episode drawn by its weight (chi-square over
many episodes), episodes that stay inside their source unless mixed, global items and classes, fixed and
Meta-Dataset-shaped inner samplers, random access, determinism across processes and shards, bad input."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from episodes import EpisodeSampler, MetaDatasetSampler, MultiSourceSampler, SourceEpisode, fixed_shape
from tests.episodes.test_metadataset import digest, episode_bytes, imbalanced_labels

ALPHA = 1e-3  # seeds are fixed, so each statistical test is deterministic; this only sets its strictness
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def three_sources() -> list[np.ndarray]:
    """Sources of 30, 12 and 20 classes with their own (overlapping) class ids and shuffled items."""
    rng = np.random.default_rng(7)
    return [rng.permutation(np.repeat(np.arange(30), 20)), rng.permutation(np.repeat(100 + np.arange(12), 9)),
            rng.permutation(np.repeat(np.arange(20) * 2, 25))]


def source_of_items(sampler: MultiSourceSampler, items: np.ndarray) -> np.ndarray:
    """The source each global item lies in (-1 outside every source)."""
    result = np.full(len(items), -1)
    for s, (offset, length) in enumerate(zip(sampler.offsets, sampler.source_lengths)):
        result[(items >= offset) & (items < offset + length)] = s
    return result


def run_script(code: str) -> dict[int, bytes]:
    """Run `code` in a fresh interpreter; it prints `index hex-bytes` lines; return {index: bytes}."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    pairs = (line.split() for line in result.stdout.splitlines())
    return {int(index): bytes.fromhex(data) for index, data in pairs}


def check_processes_and_shards(build: str, here, count: int) -> None:
    """Episodes of `build` (code defining `sampler`) from another process and from 3 shards in 3 more
    processes hash to the episodes of `here` in this process."""
    expected = hashlib.sha256(b"".join(episode_bytes(e) for e in here.iterate())).hexdigest()
    script = ("import sys\nsys.path.insert(0, {root!r})\n{build}\n"
              "for episode in sampler.iterate(shard={shard}, num_shards={shards}, chunk=13):\n"
              "    print(episode.index, episode_bytes(episode).hex())\n")
    whole = run_script(script.format(root=ROOT, build=build, shard=0, shards=1))
    shards = [run_script(script.format(root=ROOT, build=build, shard=s, shards=3)) for s in range(3)]
    assert sorted(whole) == list(range(count))
    assert sum(len(s) for s in shards) == count and set().union(*shards) == set(range(count))
    merged = {index: data for shard in shards for index, data in shard.items()}
    for episodes in (whole, merged):
        assert hashlib.sha256(b"".join(episodes[i] for i in range(count))).hexdigest() == expected


# --- the source choice ---------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "expected"), [
    ((5, 3, 2), [0.5, 0.3, 0.2]),
    ("classes", [30 / 62, 12 / 62, 20 / 62]),
    ("uniform", [1 / 3, 1 / 3, 1 / 3]),
])
def test_source_frequencies_match_the_weights(weights, expected):
    sampler = MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), weights=weights, seed=11)
    assert np.allclose(sampler.probabilities, expected)
    count = 6000
    chosen = sampler.choose(np.arange(count))
    observed = np.bincount(chosen, minlength=3)
    assert stats.chisquare(observed, np.array(expected) * count).pvalue > ALPHA
    # The recorded source is the chosen one.
    draw = sampler.draw(np.arange(300))
    assert np.array_equal(draw.choices, chosen[:300])
    assert [e.source for e in draw.episodes()] == chosen[:300].tolist()


def test_a_zero_weight_source_is_never_chosen():
    sampler = MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), weights=[1, 0, 1], seed=2)
    assert 1 not in set(sampler.choose(np.arange(3000)).tolist())


def test_source_choice_is_independent_of_the_other_seeds():
    """Two seeds give different source sequences; the choice and the inner episode are independent."""
    a = MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), seed=1).choose(np.arange(500))
    b = MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), seed=2).choose(np.arange(500))
    assert not np.array_equal(a, b)
    table = np.array([np.bincount(a[:-1][a[1:] == k], minlength=3) for k in range(3)])
    assert stats.chi2_contingency(table).pvalue > ALPHA  # consecutive choices are independent


# --- episodes stay in their source ---------------------------------------------------------------

def test_items_of_an_episode_all_belong_to_the_chosen_source():
    sources = three_sources()
    sampler = MultiSourceSampler(sources, fixed_shape(5, 2, 3), seed=3, num_episodes=400)
    assert np.array_equal(sampler.offsets, [0, 600, 708]) and len(sampler.labels) == 1208
    for episode in sampler.iterate(chunk=50):
        assert isinstance(episode, SourceEpisode) and episode.source in (0, 1, 2)
        assert set(source_of_items(sampler, episode.indices()).tolist()) == {episode.source}
        assert np.all(episode.class_sources == episode.source)
        # Global labels and global class ids agree; the original ids come back through the class table.
        assert np.array_equal(sampler.labels[episode.support], episode.classes[episode.support_labels])
        assert np.array_equal(sampler.labels[episode.query], episode.classes[episode.query_labels])
        local = episode.support - sampler.offsets[episode.source]
        originals = sampler.class_original[episode.classes]
        assert np.array_equal(sources[episode.source][local], originals[episode.support_labels])


def test_an_episode_is_its_source_samplers_episode_shifted():
    """Composition: episode i of source s is episode i of s's own sampler, items offset into the store."""
    sampler = MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), seed=9)
    for index in range(40):
        episode = sampler.episode(index)
        inner = sampler.samplers[episode.source].episode(index)
        assert np.array_equal(episode.support, inner.support + sampler.offsets[episode.source])
        assert np.array_equal(sampler.class_original[episode.classes], inner.classes)


def test_given_offsets_place_sources_in_a_larger_store():
    sources = three_sources()
    sampler = MultiSourceSampler(sources, fixed_shape(5, 1, 3), offsets=[2000, 0, 1000], seed=4)
    assert len(sampler.labels) == 2000 + 600 and np.all(sampler.labels[108:1000] == -1)
    for episode in sampler.episodes(range(200)):
        offset = sampler.offsets[episode.source]
        local = episode.indices() - offset
        assert np.all((local >= 0) & (local < len(sources[episode.source])))


def test_per_source_classes_restrict_episodes():
    sampler = MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), classes=[range(10), None, [0, 2, 4, 6, 8]],
                                 weights="classes", seed=5)
    assert np.allclose(sampler.probabilities, np.array([10, 12, 5]) / 27)
    for episode in sampler.episodes(range(200)):
        originals = set(sampler.class_original[episode.classes].tolist())
        allowed = {0: set(range(10)), 1: set(range(100, 112)), 2: {0, 2, 4, 6, 8}}[episode.source]
        assert originals <= allowed


def test_meta_dataset_shaped_sources():
    sources = [imbalanced_labels(40, seed=1), np.repeat(np.arange(15), 30)]
    sampler = MultiSourceSampler(sources, functools.partial(MetaDatasetSampler, max_ways=12), seed=6,
                                 num_episodes=300)
    assert sampler.queries is None
    episodes = sampler.episodes(range(300))
    assert len({e.ways for e in episodes}) > 3 and any(len(set(e.support_counts.tolist())) > 1 for e in episodes)
    for episode in episodes:
        assert set(source_of_items(sampler, episode.indices()).tolist()) == {episode.source}
        assert np.array_equal(sampler.labels[episode.support], episode.classes[episode.support_labels])


def test_mixed_episodes_take_classes_from_several_sources():
    sources = three_sources()
    sampler = MultiSourceSampler(sources, fixed_shape(6, 1, 3), mix=True, seed=8, num_episodes=500)
    assert sampler.source_probabilities is None and sampler.num_classes == 62
    draw = sampler.draw(np.arange(500))
    assert np.all(draw.choices == -1)
    spans = []
    for episode in draw.episodes():
        assert episode.source == -1
        assert np.array_equal(sampler.labels[episode.support], episode.classes[episode.support_labels])
        assert np.array_equal(source_of_items(sampler, episode.support), episode.class_sources[episode.support_labels])
        spans.append(len(set(episode.class_sources.tolist())))
    assert max(spans) == 3
    # Classes are equally likely whatever their source.
    picked = np.concatenate([draw.classes[e, :draw.ways[e]] for e in range(500)])
    assert stats.chisquare(np.bincount(picked, minlength=62)).pvalue > ALPHA


# --- random access, processes and shards ---------------------------------------------------------

def test_random_access_matches_iteration_and_any_chunking():
    sampler = MultiSourceSampler(three_sources(), fixed_shape((3, 6), (1, 3), 2), seed=5, num_episodes=150)
    streamed = list(sampler.iterate(chunk=7))
    assert [e.index for e in streamed] == list(range(150))
    assert digest(streamed) == digest(sampler.episodes(range(150)))
    for i in (0, 6, 7, 149):
        assert episode_bytes(sampler.episode(i)) == episode_bytes(streamed[i])
    together = sampler.episodes([120, 3, 77])
    assert [episode_bytes(e) for e in together] == [episode_bytes(streamed[i]) for i in (120, 3, 77)]
    other = MultiSourceSampler(three_sources(), fixed_shape((3, 6), (1, 3), 2), seed=6, num_episodes=150)
    assert digest(other.episodes(range(50))) != digest(streamed[:50])


BUILD_SOURCES = """
import functools
from tests.episodes.test_sources import three_sources
from tests.episodes.test_metadataset import episode_bytes
from episodes import MultiSourceSampler, MetaDatasetSampler
sampler = MultiSourceSampler(three_sources(), functools.partial(MetaDatasetSampler, max_ways=10),
                             weights=(2, 1, 1), seed=2**63 + 5, num_episodes=300)
"""


def test_two_processes_and_disjoint_shards_give_one_process_episodes():
    here = MultiSourceSampler(three_sources(), functools.partial(MetaDatasetSampler, max_ways=10),
                              weights=(2, 1, 1), seed=2**63 + 5, num_episodes=300)
    check_processes_and_shards(BUILD_SOURCES, here, 300)


def test_tensor_store_takes_a_multi_source_draw():
    torch = pytest.importorskip("torch")
    from episodes.torch import TensorStore  # the optional adapter, imported only when torch is there

    sampler = MultiSourceSampler(three_sources(), fixed_shape(4, 2, 3), seed=1)
    images = torch.arange(len(sampler.labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    store = TensorStore(images)
    draw = sampler.draw(np.arange(6))
    for episode, (support_x, support_y, query_x, _, classes) in zip(
            draw.episodes(), store.iter_episodes(draw, dtype=torch.uint8, with_classes=True)):
        assert np.array_equal(support_x[:, 0, 0, 0].numpy(), episode.support % 256)
        assert np.array_equal(support_y.numpy(), episode.support_labels)
        assert np.array_equal(classes.numpy(), episode.classes)


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("arguments", "message"), [
    (dict(weights=(1, 2)), r"source weights must be 'uniform', 'classes' or one number per source \(3\)"),
    (dict(weights=(1, -1, 2)), r"source weights must be finite, >= 0 and not all 0, got \[1.0, -1.0, 2.0\]"),
    (dict(weights=(0, 0, 0)), r"not all 0"),
    (dict(weights="sizes"), r"source weights must be 'uniform', 'classes' or one number per source, got 'sizes'"),
    (dict(mix=True, weights="classes"), r"mix=True draws classes from all sources alike"),
    (dict(offsets=[0, 500, 1000]), r"sources 0 and 1 overlap in the concatenated store: source 0 spans \[0, 600\)"),
    (dict(offsets=[0, -1, 1000]), r"offsets must be one non-negative int per source \(3\)"),
    (dict(classes=[None]), r"classes must give one entry \(or None\) per source \(3\), got 1"),
    (dict(classes=[None, [5], None], mix=True), r"classes of source 1 must be non-empty class ids of that source"),
    (dict(seed=-1), r"seed must be an int in \[0, 2\*\*64\), got -1"),
    (dict(num_episodes=0), r"num_episodes must be a positive int or None, got 0"),
])
def test_bad_arguments_raise_naming_the_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), **arguments)


def test_bad_sources_and_inner_samplers():
    with pytest.raises(ValueError, match="sources must be a non-empty sequence of labels arrays"):
        MultiSourceSampler([], fixed_shape(5, 1, 3))
    with pytest.raises(ValueError, match="inner samplers must be endless"):
        MultiSourceSampler(three_sources(), functools.partial(EpisodeSampler, ways=5, shots=1, queries=3,
                                                              num_episodes=10))
    with pytest.raises(ValueError, match="ways=12 needs 12 classes but only 12|ways=13 needs 13 classes"):
        MultiSourceSampler(three_sources(), fixed_shape(13, 1, 3))
    sampler = MultiSourceSampler(three_sources(), fixed_shape(5, 1, 3), num_episodes=5)
    with pytest.raises(IndexError, match="episode index 5 out of range for num_episodes=5"):
        sampler.episode(5)
    assert len(sampler.draw([])) == 0 and sampler.episodes([]) == []
