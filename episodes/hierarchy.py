"""Episodes whose classes share a parent (one Omniglot alphabet, one sub-tree of a folder), numpy only.

As Meta-Dataset samples Omniglot (the classes of an episode from one alphabet) and ImageNet (from one
sub-tree), each episode first picks a parent, by a seeded weighted draw, then its classes and items
within that parent with the parent's own sampler (an `EpisodeSampler` or a `MetaDatasetSampler`, seeded
from (seed, parent id)). Episode `i` is a pure function of `(seed, i)`, as for every sampler here.

Lake et al. (2015)'s within-alphabet protocol (20-way 1-shot episodes whose 20 characters all come from
one alphabet of the evaluation set) is `within_parent_episodes(labels, alphabet_of_class)`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .metadataset import MetaDatasetSampler
from .sampler import Episode, EpisodeSampler, as_labels
from .sources import ChoiceSampler, check_seed_and_length, choice_probabilities, derived_seed, fixed_shape

# This module's random streams (see episodes.sources for the others).
STREAM_PARENT, STREAM_PARENT_SEEDS = 50, 51


@dataclass(frozen=True)
class ParentEpisode(Episode):
    """An episode of a `HierarchySampler`: all its classes have the parent `parent`."""

    parent: int


def parent_array(parents: Mapping[int, int] | Sequence[int] | np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """The parent id of each of `class_ids`, from a {class: parent} mapping or an array indexed by class id."""
    if isinstance(parents, Mapping):
        missing = [int(c) for c in class_ids if int(c) not in parents]
        values = [] if missing else [parents[int(c)] for c in class_ids]
    else:
        table = np.asarray(parents)
        if table.ndim != 1 or (table.size and not np.issubdtype(table.dtype, np.integer)):
            raise ValueError(f"parents must be a {{class: parent}} mapping or a 1-D int array indexed by class id, "
                             f"got {type(parents).__name__} of shape {table.shape}")
        missing = [int(c) for c in class_ids if not 0 <= c < len(table)]
        values = [] if missing else table[class_ids].tolist()
    if missing:
        raise ValueError(f"classes {missing[:20]} ({len(missing)} in all) have no parent in parents")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        wrong = [v for v in values if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_))]
        raise ValueError(f"parent ids must be ints, got {wrong[:5]}")
    return np.asarray(values, dtype=np.int64)


def ancestors(class_parents: Sequence[int] | np.ndarray, node_parents: Sequence[int] | np.ndarray,
              levels: int) -> np.ndarray:
    """Each class's ancestor `levels` steps up a tree given as parent arrays (ImageNet-like sub-trees).

    `class_parents[c]` is class c's parent node, `node_parents[n]` node n's parent node (-1 at a root).
    `levels=1` gives the parent itself, 2 the grandparent, ...; a branch that reaches its root sooner
    stops at the root. The result is the `parents` array of a `HierarchySampler` grouping by that level.
    """
    nodes = np.asarray(class_parents, dtype=np.int64)
    up = np.asarray(node_parents, dtype=np.int64)
    if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")
    bad = np.concatenate([nodes[(nodes < 0) | (nodes >= len(up))], up[(up < -1) | (up >= len(up))]])
    if bad.size:
        raise ValueError(f"class_parents and node_parents must name nodes 0..{len(up) - 1} (-1 only for a "
                         f"node's missing parent), got {bad.tolist()[:10]}")
    for _ in range(int(levels) - 1):
        above = up[nodes]
        nodes = np.where(above >= 0, above, nodes)
    return nodes


def parents_from_names(class_names: Sequence[str], *, separator: str = "/",
                       depth: int = 1) -> tuple[np.ndarray, list[str]]:
    """Group classes by the first `depth` parts of their names: ("Alphabet/character01/rot000" -> "Alphabet").

    Returns (parent id per class, parent names), parent ids numbering the names in first-seen order;
    a folder's `a/b/c` classes group by `a` with depth=1 and by `a/b` with depth=2.
    """
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    keys = []
    for name in class_names:
        parts = str(name).split(separator)
        if len(parts) <= depth:
            raise ValueError(f"class name {name!r} has no parent at depth {depth} (fewer than {depth + 1} "
                             f"{separator!r}-separated parts)")
        keys.append(separator.join(parts[:depth]))
    names = list(dict.fromkeys(keys))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[k] for k in keys], dtype=np.int64), names


class HierarchySampler(ChoiceSampler):
    """Episodes whose classes all share one parent: a seeded weighted parent, then classes within it.

    Args:
        labels: integer class per dataset item, or any object with `.labels`.
        parents: each class's parent id, as a {class: parent} mapping or an int array indexed by class id
            (for a deeper tree, `ancestors(...)` gives the parents at one level).
        make_sampler: builds a parent's sampler as `make_sampler(labels, classes=..., seed=...)`, e.g.
            `fixed_shape(ways=5, shots=1, queries=15)` or `functools.partial(MetaDatasetSampler, max_ways=20)`;
            it must not set num_episodes. It also sets `too_small` for classes with too few items.
        parent_weights: "uniform" (default), "classes" (proportional to a parent's usable classes) or a
            {parent: weight} mapping; weights of excluded parents are dropped and the rest renormalised.
        too_few: a parent with fewer usable classes than an episode needs (max ways for an `EpisodeSampler`,
            min_ways for a `MetaDatasetSampler`, whose max_ways is capped at the parent's classes as in
            Meta-Dataset): "exclude" (default) drops it with a warning and lists it in `excluded_parents`
            ({parent: usable classes}); "error" raises naming it.
        classes: restrict episodes to these class ids (e.g. the evaluation split's).
        seed, num_episodes: as for `EpisodeSampler`.
    """

    def __init__(
        self,
        labels: Any,
        parents: Mapping[int, int] | Sequence[int] | np.ndarray,
        make_sampler: Callable[..., EpisodeSampler],
        *,
        parent_weights: str | Mapping[int, float] = "uniform",
        too_few: Literal["exclude", "error"] = "exclude",
        classes: Iterable[int] | None = None,
        seed: int = 0,
        num_episodes: int | None = None,
    ) -> None:
        check_seed_and_length(seed, num_episodes)  # before the parents' samplers take seeds derived from it
        if too_few not in ("exclude", "error"):
            raise ValueError(f"too_few must be 'exclude' or 'error', got {too_few!r}")
        self.labels = as_labels(labels)
        # One sampler over every allowed class applies make_sampler's own checks once (sizes, too_small),
        # and tells how many classes an episode needs; the parents' samplers then see usable classes only.
        whole = make_sampler(self.labels, classes=None if classes is None else list(classes), seed=0)
        self.excluded = dict(whole.excluded)
        needed = whole.ways_range[0] if isinstance(whole, MetaDatasetSampler) else whole.ways_range[1]
        usable = whole.class_ids
        class_parent = parent_array(parents, usable)
        parent_ids, counts = np.unique(class_parent, return_counts=True)
        few = counts < needed
        self.excluded_parents: dict[int, int] = {int(p): int(n) for p, n in zip(parent_ids[few], counts[few])}
        if self.excluded_parents:
            listing = ", ".join(f"parent {p}: {n} classes" for p, n in list(self.excluded_parents.items())[:20])
            message = (f"{len(self.excluded_parents)} parents have fewer than the {needed} classes an episode "
                       f"needs ({listing}{', ...' if len(self.excluded_parents) > 20 else ''})")
            if too_few == "error":
                raise ValueError(message + "; pass too_few='exclude' to leave them out")
            warnings.warn(message + "; excluded from episodes (see sampler.excluded_parents)", stacklevel=2)
        self.parent_ids = parent_ids[~few]
        if len(self.parent_ids) == 0:
            raise ValueError(f"no parent has the {needed} classes an episode needs (largest: {int(counts.max())})")
        self.parent_class_counts = counts[~few]

        # Each parent's sampler sees only its items (a sub-array), so it sorts them once, not the whole labels.
        self.parent_items: list[np.ndarray] = []
        samplers = []
        for parent in self.parent_ids.tolist():
            members = usable[class_parent == parent]
            items = np.flatnonzero(np.isin(self.labels, members))
            self.parent_items.append(items)
            samplers.append(make_sampler(self.labels[items], classes=members.tolist(),
                                         seed=derived_seed(seed, STREAM_PARENT_SEEDS, parent)))
        if isinstance(parent_weights, Mapping):
            unknown = sorted(set(int(p) for p in parent_ids) - set(int(p) for p in parent_weights))
            if unknown:
                raise ValueError(f"parent_weights has no weight for parents {unknown[:20]}")
            parent_weights = [parent_weights[int(p)] for p in self.parent_ids]
        probabilities = choice_probabilities(parent_weights, self.parent_class_counts.tolist(), "parent")
        super().__init__(samplers, probabilities, seed=seed, num_episodes=num_episodes, stream=STREAM_PARENT)

    def wrap(self, choice: int, episode: Episode) -> ParentEpisode:
        items = self.parent_items[choice]
        return ParentEpisode(index=episode.index, classes=episode.classes, support=items[episode.support],
                             support_labels=episode.support_labels, query=items[episode.query],
                             query_labels=episode.query_labels, parent=int(self.parent_ids[choice]))

    def recorded_choice(self, choice: int) -> int:
        return int(self.parent_ids[choice])

    @property
    def parent_probabilities(self) -> dict[int, float]:
        """{parent: probability that an episode is drawn from it}."""
        return dict(zip(self.parent_ids.tolist(), self.probabilities.tolist()))

    @property
    def num_classes(self) -> int:
        """Classes episodes are drawn from (those of the included parents)."""
        return int(self.parent_class_counts.sum())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(parents={len(self.parent_ids)}, excluded_parents={len(self.excluded_parents)}, "
                f"classes={self.num_classes}, sampler={self.samplers[0]!r}, seed={self.seed}, "
                f"num_episodes={self.num_episodes})")


def within_parent_episodes(labels: Any, parents: Mapping[int, int] | Sequence[int] | np.ndarray, *, ways: int = 20,
                           shots: int = 1, queries: int = 1, classes: Iterable[int] | None = None, seed: int = 0,
                           num_episodes: int | None = None,
                           too_few: Literal["exclude", "error"] = "exclude") -> HierarchySampler:
    """Lake et al. (2015)'s within-alphabet protocol: `ways`-way `shots`-shot episodes whose classes all
    come from one parent (alphabet), the parent uniform per episode; parents with fewer than `ways`
    classes are excluded (warned) or refused (`too_few="error"`). Lake's runs have one query per class."""
    return HierarchySampler(labels, parents, fixed_shape(ways, shots, queries), parent_weights="uniform",
                            too_few=too_few, classes=classes, seed=seed, num_episodes=num_episodes)


__all__ = ["HierarchySampler", "ParentEpisode", "ancestors", "parent_array", "parents_from_names",
           "within_parent_episodes"]
