"""Class-balanced batches: M items from each of P classes, batch `i` a pure function of `(seed, i)`.

A class-balanced batch is a P-way M-shot episode without queries, so `ClassBalancedSampler` is an
`EpisodeSampler` with `queries = 0`: the same counter-based draws, random access, sharding, vectorised
`draw()` and PyTorch adapters (`episodes.torch.EpisodeDataset`, `EpisodeBatchSampler`). Proxy losses
(NormFace, CosFace, ProxyNCA, ...) and the pair losses train on such batches; they need no support /
query split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .sampler import EpisodeSampler, _is_int


@dataclass(frozen=True)
class ClassBatch:
    """One class-balanced batch. `indices` point into the dataset, class-major (all items of `classes[0]`
    first); `labels` are batch labels 0..P-1, so item j is of dataset class `classes[labels[j]]`."""

    index: int
    classes: np.ndarray
    indices: np.ndarray
    labels: np.ndarray

    @property
    def class_labels(self) -> np.ndarray:
        """The dataset label of each item (`classes[labels]`)."""
        return self.classes[self.labels]


class ClassBalancedSampler(EpisodeSampler):
    """Batches of `images_per_class` items from each of `classes_per_batch` classes (the "P x M" or "PK"
    batches of metric learning), each a pure function of (seed, batch index).

    Classes are drawn uniformly without replacement within a batch, items uniformly without replacement
    within a class; batches are independent draws (no epochs), so batch i is the same whatever was drawn
    before it, in any process. Batch i equals the support of episode i of
    `EpisodeSampler(labels, classes_per_batch, images_per_class, queries=0)` (which EpisodeSampler itself
    does not allow: an episode needs queries), so everything that takes an `EpisodeSampler` takes this:
    `EpisodeDataset(sampler, store)` yields `(images, labels, empty, empty)` per batch, and
    `DataLoader(dataset, batch_sampler=EpisodeBatchSampler(sampler))` yields each batch with the
    default collate as `(images, dataset labels)`.

    Args:
        labels: integer class per dataset item, or any object with a `.labels` attribute.
        classes_per_batch: P, the number of classes in each batch.
        images_per_class: M, the items drawn from each of them.
        classes: restrict batches to these class ids (e.g. the training classes).
        seed: non-negative int; batch i of seed s is the same everywhere.
        num_batches: length of the stream; None for an endless stream.
        too_small: classes with fewer than `images_per_class` items: "error" (default) raises naming
            them; "exclude" drops them, warns, and lists them in `excluded`.
    """

    _ways_name = "classes_per_batch"
    _items_name = "images_per_class"

    def __init__(self, labels: Any, classes_per_batch: int, images_per_class: int, *,
                 classes: Iterable[int] | None = None, seed: int = 0, num_batches: int | None = None,
                 too_small: Literal["error", "exclude"] = "error") -> None:
        # Checked here, with these names: EpisodeSampler would name them ways and shots (and accept ranges).
        for name, value in (("classes_per_batch", classes_per_batch), ("images_per_class", images_per_class)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_batches is not None and (not _is_int(num_batches) or num_batches < 1):
            raise ValueError(f"num_batches must be a positive int or None, got {num_batches!r}")
        super().__init__(labels, int(classes_per_batch), int(images_per_class), 0, classes=classes, seed=seed,
                         num_episodes=num_batches, too_small=too_small)

    @staticmethod
    def _check_queries(queries: Any) -> int:
        return 0  # only __init__ calls this, always with 0: a batch has no queries

    @property
    def classes_per_batch(self) -> int:
        """P: classes per batch."""
        return self.ways_range[0]

    @property
    def images_per_class(self) -> int:
        """M: items per class in a batch."""
        return self.shots_range[0]

    @property
    def batch_size(self) -> int:
        """P x M items per batch."""
        return self.classes_per_batch * self.images_per_class

    @property
    def num_batches(self) -> int | None:
        """Length of the stream (None: endless)."""
        return self.num_episodes

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(classes_per_batch={self.classes_per_batch}, images_per_class="
                f"{self.images_per_class}, classes={self.num_classes}, seed={self.seed}, "
                f"num_batches={self.num_batches})")

    def batch(self, index: int) -> ClassBatch:
        """Return batch `index` (random access)."""
        return self.batches([index])[0]

    def batches(self, indices: Sequence[int] | np.ndarray) -> list[ClassBatch]:
        """Return the batches at `indices`, drawn together (vectorised)."""
        return [_as_batch(episode) for episode in self.episodes(indices)]

    def iterate_batches(self, start: int = 0, *, shard: int = 0, num_shards: int = 1,
                        chunk: int = 64) -> Iterator[ClassBatch]:
        """Yield the batches start + shard, start + shard + num_shards, ... drawn `chunk` at a time (see
        `EpisodeSampler.episode_indices`: the shards are disjoint and together give the whole stream)."""
        for episode in self.iterate(start, shard=shard, num_shards=num_shards, chunk=chunk):
            yield _as_batch(episode)


def _as_batch(episode: Any) -> ClassBatch:
    return ClassBatch(index=episode.index, classes=episode.classes, indices=episode.support,
                      labels=episode.support_labels)


__all__ = ["ClassBatch", "ClassBalancedSampler"]
