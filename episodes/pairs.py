"""Balanced positive/negative pairs (Siamese training) and anchor/positive/negative triplets.

Built on the episode sampler's class index and counter-based randomness: batch `i` of seed `s` is a
pure function of `(s, i)`, so pair and triplet streams resume and shard exactly like episodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .sampler import EpisodeSampler, choose_subsets, counter_randint, counter_uniform

# Streams of their own, apart from the episode sampler's (0..3 and 100..103).
_STREAM_PAIR_CLASS, _STREAM_PAIR_ITEMS, _STREAM_PAIR_ORDER = 10, 11, 12
_STREAM_TRIPLET_CLASSES, _STREAM_TRIPLET_ITEMS, _STREAM_TRIPLET_NEGATIVE = 20, 21, 22


@dataclass(frozen=True)
class PairBatch:
    """Dataset index pairs; `same[j]` says whether `first[j]` and `second[j]` share a class."""

    index: int
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray


@dataclass(frozen=True)
class TripletBatch:
    """Dataset index triplets: `positive[j]` shares `anchor[j]`'s class, `negative[j]` does not."""

    index: int
    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


class _ClassBatches:
    """Shared plumbing: a class index (via EpisodeSampler's validation) and a seeded batch stream."""

    def __init__(self, labels: Any, size: int, size_name: str, *, classes: Iterable[int] | None, seed: int,
                 num_batches: int | None, too_small: Literal["error", "exclude"]) -> None:
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{size_name} must be a positive int, got {size!r}")
        # Two classes with two items each: enough for a positive and a negative of any kind.
        self._index = EpisodeSampler(labels, ways=2, shots=1, queries=1, classes=classes, seed=seed,
                                     num_episodes=num_batches, too_small=too_small)
        self.size = int(size)
        self.seed = self._index.seed
        self.num_batches = self._index.num_episodes
        self.excluded = self._index.excluded

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this sampler is endless (num_batches=None) and has no length")
        return self.num_batches

    def _check(self, index: int) -> None:
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise IndexError(f"batch index must be a non-negative int, got {index!r}")
        if self.num_batches is not None and index >= self.num_batches:
            raise IndexError(f"batch index {index} out of range for num_batches={self.num_batches}")

    def _items(self, classes: np.ndarray, picks: np.ndarray) -> np.ndarray:
        """Dataset indices of the picks-th items of class positions `classes`."""
        return self._index.members[self._index.offsets[classes] + picks]

    def batch_indices(self, start: int = 0, *, shard: int = 0, num_shards: int = 1) -> Iterator[int]:
        """Batch indices of one shard (see `EpisodeSampler.episode_indices`)."""
        return self._index.episode_indices(start, shard=shard, num_shards=num_shards)


class PairSampler(_ClassBatches):
    """Batches of `pairs` index pairs, half positive (same class), half negative (two classes).

    Positive pairs pick a class uniformly, then two distinct items; negative pairs pick two distinct
    classes uniformly, then one item of each. Pairs are shuffled within the batch.
    """

    def __init__(self, labels: Any, pairs: int, *, classes: Iterable[int] | None = None, seed: int = 0,
                 num_batches: int | None = None, too_small: Literal["error", "exclude"] = "error") -> None:
        super().__init__(labels, pairs, "pairs", classes=classes, seed=seed, num_batches=num_batches,
                         too_small=too_small)
        if self.size % 2:
            raise ValueError(f"pairs must be even to balance positives and negatives, got {pairs}")

    def batch(self, index: int) -> PairBatch:
        """Return pair batch `index` (random access)."""
        self._check(index)
        half = self.size // 2
        rows = np.arange(half)
        episode = np.full(half, index, dtype=np.int64)
        num_classes, sizes = self._index.num_classes, self._index.class_sizes
        # Positives: one class, two distinct items.
        positive_class = counter_randint(self.seed, _STREAM_PAIR_CLASS, num_classes, index, rows)
        picks = choose_subsets(self.seed, _STREAM_PAIR_ITEMS, episode, rows, sizes[positive_class], 2)
        positive_first = self._items(positive_class, picks[:, 0])
        positive_second = self._items(positive_class, picks[:, 1])
        # Negatives: two distinct classes, one item each (slots offset past the positives' rows).
        pair_classes = choose_subsets(self.seed, _STREAM_PAIR_CLASS, episode, rows + half, num_classes, 2)
        item_picks = counter_randint(self.seed, _STREAM_PAIR_ITEMS, sizes[pair_classes], index, rows[:, None] + half,
                                     np.arange(2)[None, :])
        negative_first = self._items(pair_classes[:, 0], item_picks[:, 0])
        negative_second = self._items(pair_classes[:, 1], item_picks[:, 1])
        order = np.argsort(counter_uniform(self.seed, _STREAM_PAIR_ORDER, index, np.arange(self.size)), kind="stable")
        return PairBatch(
            index=int(index),
            first=np.concatenate([positive_first, negative_first])[order],
            second=np.concatenate([positive_second, negative_second])[order],
            same=np.repeat([True, False], half)[order],
        )

    def __iter__(self) -> Iterator[PairBatch]:
        return (self.batch(i) for i in self.batch_indices())


class TripletSampler(_ClassBatches):
    """Batches of `triplets` (anchor, positive, negative): two distinct items of a uniformly drawn
    class, and one item of another uniformly drawn class."""

    def __init__(self, labels: Any, triplets: int, *, classes: Iterable[int] | None = None, seed: int = 0,
                 num_batches: int | None = None, too_small: Literal["error", "exclude"] = "error") -> None:
        super().__init__(labels, triplets, "triplets", classes=classes, seed=seed, num_batches=num_batches,
                         too_small=too_small)

    def batch(self, index: int) -> TripletBatch:
        """Return triplet batch `index` (random access)."""
        self._check(index)
        rows = np.arange(self.size)
        episode = np.full(self.size, index, dtype=np.int64)
        sizes = self._index.class_sizes
        classes = choose_subsets(self.seed, _STREAM_TRIPLET_CLASSES, episode, rows, self._index.num_classes, 2)
        anchor_class, negative_class = classes[:, 0], classes[:, 1]
        picks = choose_subsets(self.seed, _STREAM_TRIPLET_ITEMS, episode, rows, sizes[anchor_class], 2)
        negative_pick = counter_randint(self.seed, _STREAM_TRIPLET_NEGATIVE, sizes[negative_class], index, rows)
        return TripletBatch(
            index=int(index),
            anchor=self._items(anchor_class, picks[:, 0]),
            positive=self._items(anchor_class, picks[:, 1]),
            negative=self._items(negative_class, negative_pick),
        )

    def __iter__(self) -> Iterator[TripletBatch]:
        return (self.batch(i) for i in self.batch_indices())
