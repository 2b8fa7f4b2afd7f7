"""Episodes over several labelled sources (Meta-Dataset's multi-source training), numpy only.

Each episode comes from ONE source, chosen per episode by weight, and is drawn by that source's own
sampler (an `EpisodeSampler` or a `MetaDatasetSampler`); or, with `mix=True`, one sampler draws the
classes of an episode from all the sources together. The source choice is a counter-based hash of
(seed, episode index) and each source's sampler has a seed derived from (seed, source), so episode `i`
stays a pure function of `(seed, i)`: random access, any chunking, any process and any shard give the
same episode. Items are global indices into the concatenation of the sources, classes global class ids.

`ChoiceSampler`, the machinery shared with `episodes.hierarchy`, composes several samplers with a seeded
choice of one of them per episode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sampler import Episode, EpisodeSampler, as_labels, counter_uniform

# This module's random streams (EpisodeSampler uses 0-3, pairs 10-22, metadataset 30-34, hierarchy 50-51).
STREAM_SOURCE, STREAM_SOURCE_SEEDS = 40, 41
_MIX_SEED_COUNTER = 2**32  # the mixed sampler's seed counter: never a source position


def derived_seed(seed: int, stream: int, counter: int) -> int:
    """A seed for an inner sampler, a pure function of (seed, stream, counter): 53 random bits."""
    return int(counter_uniform(seed, stream, counter)[0] * 2.0**53)


def choice_probabilities(weights: Any, counts: Sequence[int], what: str) -> np.ndarray:
    """Normalised choice probabilities from "uniform", "classes" (proportional to `counts`) or numbers."""
    if isinstance(weights, str):
        if weights == "uniform":
            return np.full(len(counts), 1.0 / len(counts))
        if weights == "classes":
            counts = np.asarray(counts, dtype=np.float64)
            return counts / counts.sum()
        raise ValueError(f"{what} weights must be 'uniform', 'classes' or one number per {what}, got {weights!r}")
    values = np.asarray(weights, dtype=np.float64) if not isinstance(weights, (bool, np.bool_)) else np.array(weights)
    if values.shape != (len(counts),) or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{what} weights must be 'uniform', 'classes' or one number per {what} "
                         f"({len(counts)}), got {weights!r}")
    if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise ValueError(f"{what} weights must be finite, >= 0 and not all 0, got {values.tolist()}")
    return values / values.sum()


def check_seed_and_length(seed: Any, num_episodes: Any) -> None:
    """Refuse, naming the value, a seed outside [0, 2**64) or a num_episodes that is not a positive int or None."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if num_episodes is not None and (not isinstance(num_episodes, (int, np.integer)) or
                                     isinstance(num_episodes, bool) or num_episodes < 1):
        raise ValueError(f"num_episodes must be a positive int or None, got {num_episodes!r}")


@dataclass(frozen=True)
class ChoiceDraw:
    """Several episodes drawn together by a `ChoiceSampler`: what each came from and the episodes.

    `choices[e]` is what episode e came from (a source position, or -1 for a mixed episode, in
    `MultiSourceSampler`; a parent id in `HierarchySampler`); `classes[e, :ways[e]]` its class ids
    (padding -1). Its `slice` and `episodes` let `episodes.torch.TensorStore.iter_episodes` take it.
    """

    indices: np.ndarray
    choices: np.ndarray
    ways: np.ndarray
    classes: np.ndarray
    drawn: tuple[Episode, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def slice(self, start: int, stop: int) -> ChoiceDraw:
        """The draw of episodes start..stop-1 (positions in this draw)."""
        return ChoiceDraw(indices=self.indices[start:stop], choices=self.choices[start:stop],
                          ways=self.ways[start:stop], classes=self.classes[start:stop], drawn=self.drawn[start:stop])

    def episodes(self) -> list[Episode]:
        """The drawn episodes, in the order of `indices`."""
        return list(self.drawn)


class ChoiceSampler:
    """Episodes from one of several inner samplers, chosen per episode by a seeded weighted draw.

    Episode i comes from sampler k = choice(seed, i) with probability `probabilities[k]`, and is that
    sampler's episode i: a pure function of (seed, i) and the inner samplers' seeds. Subclasses say
    how an inner episode becomes theirs (`wrap`) and what a choice is recorded as (`recorded_choice`).
    Sharding, chunks and random access behave as `EpisodeSampler`'s.
    """

    def __init__(self, samplers: Sequence[EpisodeSampler], probabilities: np.ndarray, *, seed: int,
                 num_episodes: int | None, stream: int) -> None:
        check_seed_and_length(seed, num_episodes)
        for sampler in samplers:
            if sampler.num_episodes is not None:
                raise ValueError(f"inner samplers must be endless (num_episodes=None), got {sampler!r}")
        self.samplers = list(samplers)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.seed = int(seed)
        self.num_episodes = None if num_episodes is None else int(num_episodes)
        self._stream = stream
        self._cumulative = np.cumsum(self.probabilities)
        queries = {sampler.queries for sampler in self.samplers}
        # One query count for every inner sampler lets the fixed-query collate run; otherwise it is per episode.
        self.queries: int | None = queries.pop() if len(queries) == 1 else None

    def wrap(self, choice: int, episode: Episode) -> Episode:
        """Turn inner sampler `choice`'s episode into this sampler's (a subclass records what it came from)."""
        return episode

    def recorded_choice(self, choice: int) -> int:
        """What `ChoiceDraw.choices` records for inner sampler `choice`."""
        return choice

    def choose(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The inner sampler position of each episode index (seeded, weighted by `probabilities`)."""
        indices = self.checked_indices(indices)
        uniform = counter_uniform(self.seed, self._stream, indices)
        chosen = np.searchsorted(self._cumulative, uniform * self._cumulative[-1], side="right")
        # A zero-weight sampler spans an empty interval, so it is never chosen; the clip guards rounding at 1.
        return np.minimum(chosen, len(self.samplers) - 1).astype(np.int64)

    def draw(self, indices: Sequence[int] | np.ndarray) -> ChoiceDraw:
        """Draw the episodes at `indices` together (each inner sampler draws its own episodes vectorised)."""
        indices = self.checked_indices(indices)
        choices = self.choose(indices)
        drawn: list[Episode | None] = [None] * len(indices)
        for choice in np.unique(choices).tolist():
            where = np.flatnonzero(choices == choice)
            for position, episode in zip(where.tolist(), self.samplers[choice].draw(indices[where]).episodes()):
                drawn[position] = self.wrap(choice, episode)
        episodes = tuple(e for e in drawn if e is not None)
        ways = np.array([e.ways for e in episodes], dtype=np.int64)
        classes = np.full((len(episodes), int(ways.max()) if len(ways) else 0), -1, dtype=np.int64)
        for row, episode in enumerate(episodes):
            classes[row, :episode.ways] = episode.classes
        recorded = np.array([self.recorded_choice(c) for c in choices.tolist()], dtype=np.int64)
        return ChoiceDraw(indices=indices, choices=recorded, ways=ways, classes=classes, drawn=episodes)

    # Indices, shards and chunks: EpisodeSampler's, whose only state they read is num_episodes.
    checked_indices = EpisodeSampler.checked_indices
    episode_indices = EpisodeSampler.episode_indices
    index_chunks = EpisodeSampler.index_chunks
    iterate = EpisodeSampler.iterate
    episode = EpisodeSampler.episode
    episodes = EpisodeSampler.episodes

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("this sampler is endless (num_episodes=None) and has no length")
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        return self.iterate()


@dataclass(frozen=True)
class SourceEpisode(Episode):
    """An episode of a `MultiSourceSampler`: items are global indices, classes global class ids.

    `source` is the source the episode was drawn from, or -1 for a mixed episode (`mix=True`);
    `class_sources[j]` is the source of the episode's class j.
    """

    source: int
    class_sources: np.ndarray


class MultiSourceSampler(ChoiceSampler):
    """Episodes over several labelled sources: each from one source chosen by weight, or mixed.

    Args:
        sources: one labels array per source (or objects with `.labels`), in item order of that source.
        make_sampler: builds a source's sampler as `make_sampler(labels, classes=..., seed=...)`, e.g.
            `functools.partial(EpisodeSampler, ways=5, shots=1, queries=15)` or
            `functools.partial(MetaDatasetSampler, max_ways=20)`; it must not set num_episodes.
        weights: the probability of each source per episode: "uniform" (default), "classes" (proportional
            to each source's classes, after `classes` and exclusions) or one non-negative number per source.
        offsets: where each source's items start in the concatenated store (default: one after another);
            item j of source s is global item offsets[s] + j. Sources may not overlap.
        classes: per source, the class ids episodes may use (None: all), e.g. each source's novel classes.
        mix: draw each episode's classes from all the sources together (one sampler over the
            concatenation; `weights` must stay "uniform", classes are equally likely whatever their source).
        seed, num_episodes: as for `EpisodeSampler`.

    Global class ids number the (source, class) pairs: source 0's classes in increasing id order, then
    source 1's, ... `class_source` and `class_original` map a global id back; `labels` is the global
    labels array of the concatenated store (-1 where no source has an item); source s holds the global items
`offsets[s]` to `offsets[s] + source_lengths[s] - 1`.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        make_sampler: Callable[..., EpisodeSampler],
        *,
        weights: str | Sequence[float] = "uniform",
        offsets: Sequence[int] | None = None,
        classes: Sequence[Iterable[int] | None] | None = None,
        mix: bool = False,
        seed: int = 0,
        num_episodes: int | None = None,
    ) -> None:
        check_seed_and_length(seed, num_episodes)  # before the inner samplers take seeds derived from it
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence) or len(sources) == 0:
            raise ValueError(f"sources must be a non-empty sequence of labels arrays, got {sources!r}")
        if not isinstance(mix, bool):
            raise ValueError(f"mix must be True or False, got {mix!r}")
        if mix and not (isinstance(weights, str) and weights == "uniform"):
            raise ValueError("mix=True draws classes from all sources alike; weights must stay 'uniform', "
                             f"got {weights!r}")
        source_labels = [as_labels(labels) for labels in sources]
        if classes is None:
            classes = [None] * len(source_labels)
        if len(classes) != len(source_labels):
            raise ValueError(f"classes must give one entry (or None) per source ({len(source_labels)}), "
                             f"got {len(classes)}")
        self.source_lengths = np.array([len(labels) for labels in source_labels], dtype=np.int64)
        self.offsets = self._checked_offsets(offsets, self.source_lengths.tolist())
        self.mix = mix

        # The global class table: (source, original class) pairs, sources in order, classes sorted.
        originals = [np.unique(labels) for labels in source_labels]
        self.class_offsets = np.concatenate([[0], np.cumsum([len(o) for o in originals])[:-1]]).astype(np.int64)
        self.class_source = np.repeat(np.arange(len(originals)), [len(o) for o in originals])
        self.class_original = np.concatenate(originals)
        self._originals = originals
        self.labels = np.full(max(int(o) + len(l) for o, l in zip(self.offsets, source_labels)), -1, dtype=np.int64)
        for s, labels in enumerate(source_labels):
            self.labels[self.offsets[s]:self.offsets[s] + len(labels)] = self.global_classes(s, labels)

        if mix:
            allowed = np.concatenate([self.global_classes(s, np.unique(labels) if chosen is None
                                                          else self._known(s, chosen))
                                      for s, (labels, chosen) in enumerate(zip(source_labels, classes))])
            samplers = [make_sampler(self.labels, classes=allowed.tolist(),
                                     seed=derived_seed(seed, STREAM_SOURCE_SEEDS, _MIX_SEED_COUNTER))]
            probabilities = np.ones(1)
        else:
            samplers = [make_sampler(labels, classes=None if chosen is None else list(chosen),
                                     seed=derived_seed(seed, STREAM_SOURCE_SEEDS, s))
                        for s, (labels, chosen) in enumerate(zip(source_labels, classes))]
            probabilities = choice_probabilities(weights, [sampler.num_classes for sampler in samplers], "source")
        super().__init__(samplers, probabilities, seed=seed, num_episodes=num_episodes, stream=STREAM_SOURCE)
        self.num_sources = len(source_labels)
        # Source probabilities per episode (in mix mode, no source is chosen: the classes decide).
        self.source_probabilities = None if mix else self.probabilities

    @staticmethod
    def _checked_offsets(offsets: Sequence[int] | None, lengths: list[int]) -> np.ndarray:
        if offsets is None:
            return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        values = np.asarray(offsets)
        if values.shape != (len(lengths),) or not np.issubdtype(values.dtype, np.integer) or np.any(values < 0):
            raise ValueError(f"offsets must be one non-negative int per source ({len(lengths)}), got {offsets!r}")
        order = np.argsort(values, kind="stable")
        ends = values[order] + np.asarray(lengths)[order]
        overlap = np.flatnonzero(ends[:-1] > values[order][1:])
        if overlap.size:
            a, b = int(order[overlap[0]]), int(order[overlap[0] + 1])
            raise ValueError(f"sources {a} and {b} overlap in the concatenated store: source {a} spans "
                             f"[{values[a]}, {values[a] + lengths[a]}) and source {b} starts at {values[b]}")
        return values.astype(np.int64)

    def _known(self, source: int, chosen: Iterable[int]) -> np.ndarray:
        requested = np.asarray(list(chosen))
        missing = np.setdiff1d(requested, self._originals[source])
        if requested.size == 0 or missing.size:
            raise ValueError(f"classes of source {source} must be non-empty class ids of that source; "
                             f"{missing.tolist()[:20]} have no items there")
        return requested

    def global_classes(self, source: int, original: np.ndarray) -> np.ndarray:
        """The global class ids of source `source`'s class ids `original`."""
        return self.class_offsets[source] + np.searchsorted(self._originals[source], original)

    def wrap(self, choice: int, episode: Episode) -> SourceEpisode:
        if self.mix:  # already global: the sampler runs over the concatenation
            classes, offset, source = episode.classes, 0, -1
        else:
            classes, offset, source = self.global_classes(choice, episode.classes), int(self.offsets[choice]), choice
        return SourceEpisode(index=episode.index, classes=classes, support=episode.support + offset,
                             support_labels=episode.support_labels, query=episode.query + offset,
                             query_labels=episode.query_labels, source=source,
                             class_sources=self.class_source[classes])

    def recorded_choice(self, choice: int) -> int:
        return -1 if self.mix else choice

    @property
    def num_classes(self) -> int:
        """Classes episodes are drawn from, over all sources."""
        return sum(sampler.num_classes for sampler in self.samplers)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sources={self.num_sources}, mix={self.mix}, "
                f"probabilities={np.round(self.probabilities, 4).tolist()}, samplers={self.samplers!r}, "
                f"seed={self.seed}, num_episodes={self.num_episodes})")


def fixed_shape(ways: int | tuple[int, int], shots: int | tuple[int, int], queries: int,
                **settings: Any) -> Callable[..., EpisodeSampler]:
    """`make_sampler` for fixed-shape (or uniformly varying) N-way K-shot episodes in every source."""
    return functools.partial(EpisodeSampler, ways=ways, shots=shots, queries=queries, **settings)


__all__ = ["ChoiceDraw", "ChoiceSampler", "MultiSourceSampler", "SourceEpisode", "check_seed_and_length",
           "choice_probabilities", "derived_seed", "fixed_shape"]
