"""PyTorch adapters: a DataLoader batch_sampler, an episode collate, a sharded IterableDataset, and a
fast path that gathers episodes straight from an in-memory uint8 image tensor, rotating on the fly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, Sampler, default_collate, get_worker_info

from .sampler import EpisodeDraw, EpisodeSampler

EpisodeTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def distributed_rank_and_size() -> tuple[int, int]:
    """Return (rank, world_size) of the initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    default_rank, default_size = distributed_rank_and_size()
    rank = default_rank if rank is None else rank
    world_size = default_size if world_size is None else world_size
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    return rank, world_size


class EpisodeBatchSampler(Sampler[list[int]]):
    """Yield each episode's dataset indices (support then query), for `DataLoader(batch_sampler=...)`.

    With `world_size` > 1 (default: from torch.distributed), rank r gets episodes start + r,
    start + r + world_size, ...: disjoint across ranks, together the single-process stream.
    Pair with `collate_fn=sampler.collate` (an `EpisodeCollate`).
    """

    def __init__(self, sampler: EpisodeSampler, *, start: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.sampler = sampler
        self.start = start
        self.rank, self.world_size = _rank_and_size(rank, world_size)
        self.collate = EpisodeCollate(sampler.queries)
        self.sampler.episode_indices(start)  # validate start now rather than at iteration

    def __iter__(self) -> Iterator[list[int]]:
        for episode in self.sampler.iterate(self.start, shard=self.rank, num_shards=self.world_size):
            yield episode.indices().tolist()

    def __len__(self) -> int:
        return len(range(self.start + self.rank, len(self.sampler), self.world_size))


class EpisodeCollate:
    """Collate one episode's `(x, y)` items, laid out support then query, class-major, into
    `(support_x, support_y, query_x, query_y)` with episode labels 0..ways-1.

    Ways come from the distinct item labels and shots from `queries` (fixed per sampler), so
    variable-way and variable-shot episodes collate without extra information.
    """

    def __init__(self, queries: int) -> None:
        self.queries = queries

    def __call__(self, batch: Sequence[tuple[Any, Any]]) -> EpisodeTensors:
        images = default_collate([x for x, _ in batch])
        labels = torch.as_tensor([int(y) for _, y in batch])
        values, first_seen = np.unique(labels.numpy(), return_index=True)
        rank_of_sorted = np.argsort(np.argsort(first_seen))  # sorted class -> order of first appearance
        episode_labels = torch.from_numpy(rank_of_sorted[np.searchsorted(values, labels.numpy())])
        ways = len(values)
        per_class, remainder = divmod(len(batch), ways)
        shots = per_class - self.queries
        if remainder or shots < 1:
            raise ValueError(f"an episode of {len(batch)} items over {ways} classes does not split into "
                             f"shots + {self.queries} queries per class")
        expected = torch.cat([torch.arange(ways).repeat_interleave(shots),
                              torch.arange(ways).repeat_interleave(self.queries)])
        if not torch.equal(episode_labels, expected):
            raise ValueError("episode items are not laid out support then query, class-major, as EpisodeSampler "
                             "yields them: do the dataset's labels match the sampler's?")
        split = ways * shots
        return images[:split], expected[:split], images[split:], expected[split:]


class TensorStore:
    """Dataset items as rows of an in-memory uint8 image tensor, rotated on the fly when gathered.

    Item i is `torch.rot90(images[image_index[i]], rotation[i], dims=(-2, -1))`. Any object with
    `images`, `image_index` and `rotation` attributes (e.g. an Omniglot class split) can be wrapped
    with `TensorStore.from_arrays(obj)`.
    """

    def __init__(self, images: torch.Tensor | np.ndarray, image_index: np.ndarray | None = None,
                 rotation: np.ndarray | None = None) -> None:
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.dtype != np.uint8 or array.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 [N,H,W] or [N,C,H,W], got {array.dtype} {array.shape}")
        self.images = np.ascontiguousarray(array)  # shares memory with a contiguous CPU tensor
        self.image_index = (np.arange(len(array)) if image_index is None
                            else np.asarray(image_index, dtype=np.int64))
        if self.image_index.ndim != 1 or (len(self.image_index) and not (
                0 <= self.image_index.min() and self.image_index.max() < len(array))):
            raise ValueError(f"image_index must be 1-D with values in [0, {len(array)})")
        self.rotation = None
        if rotation is not None:
            rotation = np.asarray(rotation, dtype=np.int8)
            if rotation.shape != self.image_index.shape:
                raise ValueError(f"rotation has shape {rotation.shape}, expected {self.image_index.shape}")
            if len(rotation) and not (0 <= rotation.min() and rotation.max() <= 3):
                raise ValueError(f"rotation must be quarter turns 0..3, got {rotation.min()}..{rotation.max()}")
            if np.any(rotation % 2 == 1) and array.shape[-1] != array.shape[-2]:
                raise ValueError(f"odd quarter turns need square images, got {array.shape[-2]}x{array.shape[-1]}")
            self.rotation = rotation if np.any(rotation) else None

    @classmethod
    def from_arrays(cls, source: Any) -> TensorStore:
        """Wrap an object exposing `images`, `image_index` and `rotation` (shared, not copied)."""
        return cls(source.images, source.image_index, source.rotation)

    def __len__(self) -> int:
        return len(self.image_index)

    def gather(self, items: np.ndarray | Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return items as [n,C,H,W]: float in [0, 1] for a float dtype, or the raw uint8."""
        items = np.asarray(items, dtype=np.int64)
        out = np.take(self.images, self.image_index[items], axis=0)
        if self.rotation is not None:
            turns = self.rotation[items]
            for k in (1, 2, 3):
                rows = np.flatnonzero(turns == k)
                if len(rows):
                    out[rows] = np.rot90(out[rows], k, axes=(-2, -1))
        batch = torch.from_numpy(out)
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        if dtype == torch.uint8:
            return batch
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be torch.uint8 or a float dtype, got {dtype}")
        return batch.to(dtype).div_(255)

    def load(self, draw: EpisodeDraw, dtype: torch.dtype = torch.float32) -> list[EpisodeTensors]:
        """Gather the images of several drawn episodes at once; return one tuple per episode."""
        if draw.fixed_shape and len(draw.indices):
            return self._load_fixed(draw, dtype)
        episodes = draw.episodes()
        images = self.gather(np.concatenate([e.indices() for e in episodes]), dtype)
        result, offset = [], 0
        for episode in episodes:
            n_support, n_query = len(episode.support), len(episode.query)
            result.append((images[offset:offset + n_support], torch.from_numpy(episode.support_labels),
                           images[offset + n_support:offset + n_support + n_query],
                           torch.from_numpy(episode.query_labels)))
            offset += n_support + n_query
        return result

    def _load_fixed(self, draw: EpisodeDraw, dtype: torch.dtype) -> list[EpisodeTensors]:
        count, ways, shots, queries = len(draw.indices), int(draw.ways[0]), int(draw.shots[0]), draw.queries
        items = draw.items.reshape(count, ways, shots + queries)
        flat = np.concatenate([items[:, :, :shots].reshape(count, -1), items[:, :, shots:].reshape(count, -1)], axis=1)
        images = self.gather(flat.reshape(-1), dtype)
        images = images.view(count, ways * (shots + queries), *images.shape[1:])
        support_labels = torch.arange(ways).repeat_interleave(shots)
        query_labels = torch.arange(ways).repeat_interleave(queries)
        split = ways * shots
        return [(images[e, :split], support_labels.clone(), images[e, split:], query_labels.clone())
                for e in range(count)]


class EpisodeDataset(IterableDataset):
    """Episodes as `(support_x, support_y, query_x, query_y)`, sharded over DataLoader workers and ranks.

    Shard `rank + world_size * worker_id` of `world_size * num_workers` (worker id from
    `torch.utils.data.get_worker_info()`), so shards are disjoint and a DataLoader (batch_size=None)
    yields, in order, exactly this rank's single-process stream. `source` is a `TensorStore`, an object
    with `images`/`image_index`/`rotation` (fast path: one gather per `chunk` episodes), or any map-style
    dataset of `(x, y)` items (fetched one by one and collated).
    """

    def __init__(self, sampler: EpisodeSampler, source: Any, *, start: int = 0, rank: int | None = None,
                 world_size: int | None = None, dtype: torch.dtype = torch.float32, chunk: int = 32) -> None:
        self.sampler = sampler
        if isinstance(source, TensorStore):
            self.store = source
        elif all(hasattr(source, name) for name in ("images", "image_index", "rotation")):
            self.store = TensorStore.from_arrays(source)
        else:
            self.store = None
        self.source = source
        self.start = start
        self.rank, self.world_size = _rank_and_size(rank, world_size)
        self.dtype = dtype
        self.chunk = chunk
        self.collate = EpisodeCollate(sampler.queries)
        self.sampler.episode_indices(start)  # validate start now

    def __len__(self) -> int:
        return len(range(self.start + self.rank, len(self.sampler), self.world_size))

    def __iter__(self) -> Iterator[EpisodeTensors]:
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        chunks = self.sampler.index_chunks(self.start, shard=self.rank + self.world_size * worker_id,
                                           num_shards=self.world_size * num_workers, chunk=self.chunk)
        for indices in chunks:
            draw = self.sampler.draw(indices)
            if self.store is not None:
                yield from self.store.load(draw, self.dtype)
            else:
                for episode in draw.episodes():
                    yield self.collate([self.source[int(i)] for i in episode.indices()])
