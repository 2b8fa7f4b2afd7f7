"""Class hierarchies (`episodes.hierarchy`): every episode's classes share one parent, parents drawn with
their weights (chi-square over many episodes), parents with too few classes excluded or refused as
documented, Meta-Dataset-shaped episodes capped by the parent's classes, Lake's within-alphabet setting,
trees and class names as parents, determinism across processes and shards, bad input."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from scipy import stats

from episodes import (
    HierarchySampler,
    MetaDatasetSampler,
    ParentEpisode,
    ancestors,
    fixed_shape,
    parents_from_names,
    within_parent_episodes,
)
from tests.episodes.test_metadataset import digest, episode_bytes
from tests.episodes.test_sources import check_processes_and_shards

ALPHA = 1e-3  # seeds are fixed, so each statistical test is deterministic; this only sets its strictness
PARENT_SIZES = (25, 20, 12, 30, 3, 21)  # classes per parent ("alphabets"); parent 4 is too small for 5 ways


def alphabet_like(sizes=PARENT_SIZES, items: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, parent per class id): parents 0.. with `sizes` classes each, shuffled class ids and items."""
    rng = np.random.default_rng(seed)
    parents = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))  # class c's parent, classes interleaved
    labels = rng.permutation(np.repeat(np.arange(len(parents)), items))
    return labels, parents


def test_every_episode_takes_its_classes_from_one_parent():
    labels, parents = alphabet_like()
    with pytest.warns(UserWarning, match=r"1 parents have fewer than the 5 classes an episode needs \(parent 4: 3"):
        sampler = HierarchySampler(labels, parents, fixed_shape(5, 2, 3), seed=1, num_episodes=400)
    draw = sampler.draw(np.arange(400))
    for episode, parent in zip(draw.episodes(), draw.choices):
        assert isinstance(episode, ParentEpisode) and episode.parent == parent
        assert np.all(parents[episode.classes] == episode.parent) and len(set(episode.classes.tolist())) == 5
        assert np.array_equal(labels[episode.support], episode.classes[episode.support_labels])
        assert np.array_equal(labels[episode.query], episode.classes[episode.query_labels])
        assert len(np.unique(episode.indices())) == len(episode.indices())


@pytest.mark.parametrize(("weights", "expected"), [
    ("uniform", np.full(5, 0.2)),
    ("classes", np.array([25, 20, 12, 30, 21]) / 108),
    ({0: 1, 1: 0, 2: 2, 3: 3, 4: 9, 5: 4}, np.array([1, 0, 2, 3, 4]) / 10),  # excluded parent 4's weight dropped
])
def test_parents_are_drawn_with_their_weights(weights, expected):
    labels, parents = alphabet_like()
    with pytest.warns(UserWarning, match="excluded from episodes"):
        sampler = HierarchySampler(labels, parents, fixed_shape(5, 1, 1), parent_weights=weights, seed=7)
    assert sampler.parent_ids.tolist() == [0, 1, 2, 3, 5] and np.allclose(sampler.probabilities, expected)
    count = 5000
    chosen = sampler.draw(np.arange(count)).choices
    observed = np.array([(chosen == p).sum() for p in sampler.parent_ids])
    assert observed.sum() == count
    keep = expected > 0
    assert np.all(observed[~keep] == 0)
    assert stats.chisquare(observed[keep], expected[keep] * count).pvalue > ALPHA


def test_classes_within_a_parent_are_uniform():
    labels, parents = alphabet_like()
    with pytest.warns(UserWarning):
        sampler = HierarchySampler(labels, parents, fixed_shape(5, 1, 1), seed=2)
    draw = sampler.draw(np.arange(4000))
    in_parent = np.flatnonzero(parents == 3)
    picked = np.concatenate([draw.classes[e, :5] for e in np.flatnonzero(draw.choices == 3)])
    assert stats.chisquare([(picked == c).sum() for c in in_parent]).pvalue > ALPHA


def test_too_few_classes_raise_when_asked():
    labels, parents = alphabet_like()
    with pytest.raises(ValueError, match=r"1 parents have fewer than the 13 classes an episode needs "
                                         r"\(parent 2: 12 classes, parent 4: 3 classes\)|2 parents"):
        HierarchySampler(labels, parents, fixed_shape(13, 1, 1), too_few="error")
    with pytest.raises(ValueError, match=r"no parent has the 31 classes an episode needs \(largest: 30\)"):
        with pytest.warns(UserWarning):
            HierarchySampler(labels, parents, fixed_shape(31, 1, 1))


def test_excluded_parents_are_listed_and_never_drawn():
    labels, parents = alphabet_like()
    with pytest.warns(UserWarning, match=r"2 parents have fewer than the 13 classes"):
        sampler = HierarchySampler(labels, parents, fixed_shape(13, 1, 1), seed=3)
    assert sampler.excluded_parents == {2: 12, 4: 3} and sampler.num_classes == 25 + 20 + 30 + 21
    assert not {2, 4} & set(sampler.draw(np.arange(1000)).choices.tolist())


def test_meta_dataset_ways_are_capped_by_the_parents_classes():
    """Meta-Dataset-shaped: max_ways capped at the parent's class count; a parent below min_ways excluded."""
    labels, parents = alphabet_like(items=12)
    make = functools.partial(MetaDatasetSampler, min_ways=5, max_ways=50)
    with pytest.warns(UserWarning, match=r"\(parent 4: 3 classes\)"):
        sampler = HierarchySampler(labels, parents, make, seed=4, num_episodes=3000)
    draw = sampler.draw(np.arange(3000))
    for parent, size in zip([0, 1, 2, 3, 5], [25, 20, 12, 30, 21]):
        ways = draw.ways[draw.choices == parent]
        assert ways.min() == 5 and ways.max() == size
        # Ways uniform over [5, the parent's classes], as Meta-Dataset's capped range.
        assert stats.chisquare(np.bincount(ways, minlength=size + 1)[5:]).pvalue > ALPHA
    for episode in draw.episodes()[:300]:
        assert np.all(parents[episode.classes] == episode.parent)
        assert np.array_equal(labels[episode.support], episode.classes[episode.support_labels])


def test_lakes_within_alphabet_setting():
    """20-way 1-shot, one query per class, the 20 characters of one alphabet; smaller alphabets excluded."""
    labels, parents = alphabet_like(items=20)
    with pytest.warns(UserWarning, match=r"parent 2: 12 classes, parent 4: 3 classes"):
        sampler = within_parent_episodes(labels, parents, seed=5, num_episodes=200)
    assert sampler.parent_ids.tolist() == [0, 1, 3, 5]
    for episode in sampler.iterate():
        assert episode.ways == 20 and episode.shots == 1 and episode.queries == 1
        assert len(set(parents[episode.classes].tolist())) == 1
    # Restricted to some classes (an evaluation split): parents keep only those classes.
    evaluation = np.flatnonzero(np.isin(parents, [1, 3]))
    restricted = within_parent_episodes(labels, parents, classes=evaluation, seed=5)
    assert restricted.parent_ids.tolist() == [1, 3] and not restricted.excluded_parents
    assert set(restricted.draw(np.arange(200)).choices.tolist()) == {1, 3}


def test_parents_as_a_mapping_and_classes_with_too_few_items():
    labels = np.concatenate([np.repeat(np.arange(12), 6), [40]])  # class 40 has one item
    mapping = {c: c % 2 for c in range(12)} | {40: 0}
    with pytest.warns(UserWarning, match=r"class 40: 1 items"):
        sampler = HierarchySampler(labels, mapping, fixed_shape(3, 1, 1, too_small="exclude"), seed=0)
    assert sampler.excluded == {40: 1} and sampler.parent_ids.tolist() == [0, 1]
    assert all(40 not in e.classes for e in sampler.episodes(range(300)))
    with pytest.raises(ValueError, match=r"classes \[11\] \(1 in all\) have no parent in parents"), \
            pytest.warns(UserWarning, match=r"class 40: 1 items"):  # an excluded class needs no parent
        HierarchySampler(labels, {c: 0 for c in range(11)}, fixed_shape(3, 1, 1, too_small="exclude"))


def test_random_access_matches_iteration_and_any_chunking():
    labels, parents = alphabet_like()
    with pytest.warns(UserWarning):
        sampler = HierarchySampler(labels, parents, fixed_shape((3, 6), (1, 2), 2), seed=9, num_episodes=120)
    streamed = list(sampler.iterate(chunk=11))
    assert [e.index for e in streamed] == list(range(120))
    assert digest(streamed) == digest(sampler.episodes(range(120)))
    assert [episode_bytes(e) for e in sampler.episodes([100, 4])] == [episode_bytes(streamed[i]) for i in (100, 4)]


def test_a_parents_episodes_do_not_depend_on_the_other_parents():
    """A parent's sampler is seeded by (seed, parent id): dropping another parent keeps its episodes."""
    labels, parents = alphabet_like()
    with pytest.warns(UserWarning):
        everything = HierarchySampler(labels, parents, fixed_shape(5, 1, 1), seed=6)
        fewer = HierarchySampler(labels, parents, fixed_shape(5, 1, 1), seed=6,
                                 classes=np.flatnonzero(parents != 1))
    a = everything.samplers[everything.parent_ids.tolist().index(3)]
    b = fewer.samplers[fewer.parent_ids.tolist().index(3)]
    assert digest(a.episodes(range(30))) == digest(b.episodes(range(30)))


BUILD_HIERARCHY = """
import functools, warnings
from tests.episodes.test_hierarchy import alphabet_like
from tests.episodes.test_metadataset import episode_bytes
from episodes import HierarchySampler, MetaDatasetSampler
labels, parents = alphabet_like()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sampler = HierarchySampler(labels, parents, functools.partial(MetaDatasetSampler, max_ways=12),
                               parent_weights="classes", seed=2**64 - 3, num_episodes=300)
"""


def test_two_processes_and_disjoint_shards_give_one_process_episodes():
    labels, parents = alphabet_like()
    with pytest.warns(UserWarning):
        here = HierarchySampler(labels, parents, functools.partial(MetaDatasetSampler, max_ways=12),
                                parent_weights="classes", seed=2**64 - 3, num_episodes=300)
    check_processes_and_shards(BUILD_HIERARCHY, here, 300)


# --- trees and names as parents -------------------------------------------------------------------

def test_ancestors_walk_up_a_tree():
    # root 0 -> nodes 1, 2; node 1 -> 3, 4; node 2 -> 5. Classes hang under 3, 4, 5 and 2.
    node_parents = [-1, 0, 0, 1, 1, 2]
    class_parents = [3, 3, 4, 5, 2]
    assert ancestors(class_parents, node_parents, 1).tolist() == [3, 3, 4, 5, 2]
    assert ancestors(class_parents, node_parents, 2).tolist() == [1, 1, 1, 2, 0]
    assert ancestors(class_parents, node_parents, 5).tolist() == [0, 0, 0, 0, 0]  # stops at the root
    with pytest.raises(ValueError, match=r"must name nodes 0..5 .* got \[6\]"):
        ancestors([6], node_parents, 1)
    with pytest.raises(ValueError, match="levels must be a positive int, got 0"):
        ancestors(class_parents, node_parents, 0)


def test_parents_from_names():
    names = ["Greek/character01/rot000", "Greek/character02/rot000", "Latin/character01/rot090",
             "Greek/character01/rot090"]
    parents, parent_names = parents_from_names(names)
    assert parents.tolist() == [0, 0, 1, 0] and parent_names == ["Greek", "Latin"]
    parents, parent_names = parents_from_names(names, depth=2)
    assert parents.tolist() == [0, 1, 2, 0] and parent_names[2] == "Latin/character01"
    with pytest.raises(ValueError, match=r"class name 'flat' has no parent at depth 1"):
        parents_from_names(["flat"])


@pytest.mark.parametrize(("arguments", "message"), [
    (dict(too_few="cap"), r"too_few must be 'exclude' or 'error', got 'cap'"),
    (dict(parent_weights={0: 1}), r"parent_weights has no weight for parents \[1, 2, 3, 4, 5\]"),
    (dict(parent_weights="sizes"), r"parent weights must be 'uniform', 'classes' or one number per parent"),
    (dict(seed=2**64), r"seed must be an int in \[0, 2\*\*64\)"),
])
def test_bad_arguments_raise_naming_the_value(arguments, message):
    labels, parents = alphabet_like()
    with pytest.raises(ValueError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parent 4's exclusion, when the check comes after it
        HierarchySampler(labels, parents, fixed_shape(5, 1, 1), **arguments)


def test_bad_parents():
    labels, parents = alphabet_like()
    with pytest.raises(ValueError, match=r"have no parent in parents"):
        HierarchySampler(labels, parents[:50], fixed_shape(5, 1, 1))
    with pytest.raises(ValueError, match=r"parents must be a \{class: parent\} mapping or a 1-D int array"):
        HierarchySampler(labels, parents.astype(float), fixed_shape(5, 1, 1))


def test_torch_adapters_take_a_hierarchy_sampler():
    torch = pytest.importorskip("torch")
    from episodes.torch import EpisodeBatchSampler, EpisodeDataset  # the optional adapter, only with torch

    labels, parents = alphabet_like(items=8)
    with pytest.warns(UserWarning):
        sampler = HierarchySampler(labels, parents, fixed_shape(5, 2, 3), seed=1, num_episodes=12)
    images = torch.arange(len(labels)).remainder(256).to(torch.uint8).view(-1, 1, 1, 1).contiguous()
    episodes = sampler.episodes(range(12))
    dataset = EpisodeDataset(sampler, _Items(images, labels), rank=0, world_size=1)
    batches = list(EpisodeBatchSampler(sampler, rank=0, world_size=1))
    assert len(dataset) == 12 and [list(b) for b in batches] == [e.indices().tolist() for e in episodes]
    for episode, (support_x, support_y, query_x, query_y) in zip(episodes, dataset):
        assert np.array_equal(support_x.view(-1).numpy(), episode.support % 256)
        assert np.array_equal(query_y.numpy(), episode.query_labels)


class _Items:
    """A map-style dataset of (image, label) over a tensor (the adapters' slow, general path)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])
