"""learn2learn interop: build a sampler from an l2l `MetaDataset` and serve tasks in the `[X, y]` form
that learn2learn training loops consume (`tasks.sample()`, indexing, iteration), so an existing l2l
loop runs unchanged on our seeded, resumable episodes.

`X` holds each class's items together, support first (`shots` items) then query, classes in label
order, like l2l's `FusedNWaysKShots + LoadData + RemapLabels + ConsecutiveLabels`; so
`learn2learn.data.utils.partition_task(X, y, shots)` recovers exactly our support and query sets.
Imbalanced episodes (a `MetaDatasetSampler`: shots differ per class) keep that layout, but l2l's
`partition_task` assumes one shots count; each task is an `EpisodeTask` (still the list `[X, y]`)
carrying its per-class counts, and `partition_episode_task(task)` splits it.
This module does not import learn2learn itself: it reads the `labels_to_indices` attribute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .metadataset import MetaDatasetSampler
from .sampler import Episode, EpisodeSampler, Size
from .torch import TensorStore


def labels_from_metadataset(dataset: Any) -> np.ndarray:
    """Per-item labels of a learn2learn `MetaDataset` (or anything with `labels_to_indices`)."""
    mapping = getattr(dataset, "labels_to_indices", None)
    if mapping is None:
        raise ValueError(f"{type(dataset).__name__} has no labels_to_indices: wrap it in l2l.data.MetaDataset")
    labels = np.zeros(len(dataset), dtype=np.int64)
    assigned = np.zeros(len(dataset), dtype=bool)
    for label, indices in mapping.items():
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            raise ValueError(f"labels must be integers, got {label!r} ({type(label).__name__})")
        indices = np.asarray(indices, dtype=np.int64)
        labels[indices] = label
        assigned[indices] = True
    if not assigned.all():
        raise ValueError(f"items {np.flatnonzero(~assigned)[:10].tolist()} are in no class of labels_to_indices")
    return labels


def sampler_from_metadataset(dataset: Any, ways: Size, shots: Size, queries: int, **kwargs: Any) -> EpisodeSampler:
    """An `EpisodeSampler` over a learn2learn `MetaDataset`'s classes (kwargs as for EpisodeSampler)."""
    return EpisodeSampler(labels_from_metadataset(dataset), ways, shots, queries, **kwargs)


def meta_dataset_sampler_from_metadataset(dataset: Any, **kwargs: Any) -> MetaDatasetSampler:
    """A `MetaDatasetSampler` (variable, imbalanced episodes) over a learn2learn `MetaDataset`'s classes
    (kwargs as for MetaDatasetSampler)."""
    return MetaDatasetSampler(labels_from_metadataset(dataset), **kwargs)


class EpisodeTask(list):
    """learn2learn's task `[X, y]` (so `X, y = task` works), with the episode's layout attached.

    `X` holds each class's support items then its query items, classes in label order;
    `support_counts[c]` and `query_counts[c]` are class c's numbers of each (equal across classes unless
    the episode is imbalanced), and `episode` is the drawn `Episode`.
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, episode: Episode) -> None:
        super().__init__([data, labels])
        self.episode = episode
        self.support_counts = torch.from_numpy(episode.support_counts)
        self.query_counts = torch.from_numpy(np.bincount(episode.query_labels, minlength=episode.ways))

    @property
    def support_mask(self) -> torch.Tensor:
        """True for the rows of `X` that are support items."""
        per_class = torch.stack([self.support_counts, self.query_counts], dim=1).reshape(-1)
        return torch.tensor([True, False]).repeat(len(self.support_counts)).repeat_interleave(per_class)


def partition_episode_task(task: EpisodeTask) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                       tuple[torch.Tensor, torch.Tensor]]:
    """Split a task into `((support_x, support_y), (query_x, query_y))`, like l2l's `partition_task`, for any
    per-class shots (imbalanced episodes included); support and query stay class-major."""
    if not isinstance(task, EpisodeTask):
        raise ValueError(f"partition_episode_task needs an EpisodeTask from EpisodeTaskset, got {type(task).__name__}; "
                         "for l2l's own tasks use learn2learn.data.utils.partition_task")
    data, labels = task
    mask = task.support_mask
    return (data[mask], labels[mask]), (data[~mask], labels[~mask])


class EpisodeTaskset:
    """Tasks `[X, y]` drawn by an `EpisodeSampler` (or a `MetaDatasetSampler`), with learn2learn's
    `TaskDataset` interface; each task is an `EpisodeTask` (see `partition_episode_task`).

    `sample()` returns the next task of the stream (from episode `start`); `tasks[i]` is episode i;
    iterating yields every task from `start` (to `num_episodes`). `source` is the dataset the sampler's
    indices point into: a map-style dataset of `(x, y)` items (l2l's LoadData reads them the same way),
    or an object with `images`/`image_index`/`rotation` (fast path, float images in [0, 1]).
    """

    def __init__(self, source: Any, sampler: EpisodeSampler, *, start: int = 0) -> None:
        self.dataset = source
        self.sampler = sampler
        fast = all(hasattr(source, name) for name in ("images", "image_index", "rotation"))
        self.store = TensorStore.from_arrays(source) if fast else None
        self.start = start
        self._next = start
        sampler.episode_indices(start)  # validate start now

    @property
    def num_tasks(self) -> int:
        """Number of tasks, or -1 for an endless stream (as in learn2learn)."""
        return -1 if self.sampler.num_episodes is None else self.sampler.num_episodes

    def __len__(self) -> int:
        return len(self.sampler)

    def sample(self) -> EpisodeTask:
        """Return the next task `[X, y]` of the stream."""
        if self.sampler.num_episodes is not None and self._next >= self.sampler.num_episodes:
            raise StopIteration(f"all {self.sampler.num_episodes} tasks have been sampled")
        task = self[self._next]
        self._next += 1
        return task

    def __getitem__(self, index: int) -> EpisodeTask:
        return self.task(self.sampler.episode(index))

    def __iter__(self) -> Iterator[EpisodeTask]:
        for episode in self.sampler.iterate(self.start):
            yield self.task(episode)

    def task(self, episode: Episode) -> EpisodeTask:
        """Lay an episode out as learn2learn's `[X, y]`: per class, support items then query items."""
        # Sorting by (label, query?) keeps each class's support then query items, in episode order.
        keys = np.concatenate([episode.support_labels * 2, episode.query_labels * 2 + 1])
        position = np.argsort(keys, kind="stable")
        order = np.concatenate([episode.support, episode.query])[position]
        labels = torch.from_numpy(keys[position] // 2)
        if self.store is not None:
            return EpisodeTask(self.store.gather(order), labels, episode)
        data = [self.dataset[int(i)][0] for i in order]
        return EpisodeTask(torch.stack([torch.as_tensor(x) for x in data]), labels, episode)
