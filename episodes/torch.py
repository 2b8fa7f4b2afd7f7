"""PyTorch adapters: a DataLoader batch_sampler, an episode collate, a sharded IterableDataset, and a
fast path that gathers episodes straight from an in-memory uint8 image tensor, rotating on the fly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, Sampler, default_collate, get_worker_info

from .metadataset import MetaDatasetDraw
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
    Pair it with its `collate` (an `EpisodeCollate`): `DataLoader(dataset, batch_sampler=bs, collate_fn=bs.collate)`.
    """

    def __init__(self, sampler: EpisodeSampler, *, start: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.sampler = sampler
        self.start = start
        self.rank, self.world_size = _rank_and_size(rank, world_size)
        refuse_dirichlet_queries(sampler)
        self.collate = EpisodeCollate(sampler.queries)
        self.sampler.episode_indices(start)  # validate start now rather than at iteration

    def __iter__(self) -> Iterator[list[int]]:
        for episode in self.sampler.iterate(self.start, shard=self.rank, num_shards=self.world_size):
            yield episode.indices().tolist()

    def __len__(self) -> int:
        return len(range(self.start + self.rank, len(self.sampler), self.world_size))


def refuse_dirichlet_queries(sampler: EpisodeSampler) -> None:
    """Refuse a sampler drawing Dirichlet query counts: a class may get no query, so the collate cannot find an
    episode's query block from its item labels."""
    if getattr(sampler, "query_dirichlet", None) is not None:
        raise ValueError(f"{sampler!r} draws Dirichlet query counts (query_dirichlet={sampler.query_dirichlet}), "
                         "which the PyTorch collate cannot split from item labels; use sampler.episodes() and index "
                         "the items yourself")


class EpisodeCollate:
    """Collate one episode's `(x, y)` items, laid out support then query, class-major, into
    `(support_x, support_y, query_x, query_y)` with episode labels 0..ways-1.

    Ways come from the distinct item labels and shots from `queries` (fixed per sampler), so
    variable-way and variable-shot episodes collate without extra information. With `queries=None`
    (a `MetaDatasetSampler`: queries vary per episode, shots per class) the query block is found where
    the first class comes back after the support block, and each class may have its own shots and
    queries; such episodes need at least two classes.
    """

    def __init__(self, queries: int | None) -> None:
        self.queries = queries

    def __call__(self, batch: Sequence[tuple[Any, Any]]) -> EpisodeTensors:
        images = default_collate([x for x, _ in batch])
        labels = torch.as_tensor([int(y) for _, y in batch])
        values, first_seen = np.unique(labels.numpy(), return_index=True)
        rank_of_sorted = np.argsort(np.argsort(first_seen))  # sorted class -> order of first appearance
        episode_labels = torch.from_numpy(rank_of_sorted[np.searchsorted(values, labels.numpy())])
        ways = len(values)
        if self.queries is None:
            return self._collate_imbalanced(images, episode_labels, ways)
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

    @staticmethod
    def _collate_imbalanced(images: torch.Tensor, episode_labels: torch.Tensor, ways: int) -> EpisodeTensors:
        labels = episode_labels.numpy()
        returns = np.flatnonzero((labels[1:] == 0) & (labels[:-1] != 0)) + 1  # where class 0 comes back
        if ways < 2 or len(returns) == 0:
            raise ValueError(f"an episode of {len(labels)} items over {ways} classes has no query block where "
                             "class 0 comes back: imbalanced episodes need >= 2 classes, support then query")
        split = int(returns[0])
        support_counts = np.bincount(labels[:split], minlength=ways)
        query_counts = np.bincount(labels[split:], minlength=ways)
        classes = np.arange(ways)
        expected = np.concatenate([np.repeat(classes, support_counts), np.repeat(classes, query_counts)])
        if support_counts.min() < 1 or query_counts.min() < 1 or not np.array_equal(labels, expected):
            raise ValueError("episode items are not laid out support then query, class-major, each class in both, "
                             "as MetaDatasetSampler yields them: do the dataset's labels match the sampler's?")
        y = torch.from_numpy(expected)
        return images[:split], y[:split], images[split:], y[split:]


class TensorStore:
    """Dataset items as rows of an in-memory uint8 image tensor, rotated on the fly when gathered.

    Item i is `torch.rot90(images[image_index[i]], rotation[i], dims=(-2, -1))`. Any object with
    `images`, `image_index` and `rotation` attributes (e.g. an Omniglot class split) can be wrapped
    with `TensorStore.from_arrays(obj)`; the image memory is shared, not copied.

    Items are gathered with one vectorised take from the images stacked on a quarter-turned copy of them
    (made on first need when some turn is odd: 2x the image memory, never 4x); items with half turns
    then have each channel's pixels reversed. `cache_rotations=True` instead stores each (image,
    rotation) pair that items use once, rotated, so that a gather is a single copy: faster, at
    the cost of that memory (for Omniglot with 4 rotations of every image: 4x the image memory).
    """

    def __init__(self, images: torch.Tensor | np.ndarray, image_index: np.ndarray | None = None,
                 rotation: np.ndarray | None = None, *, cache_rotations: bool = False) -> None:
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.dtype != np.uint8 or array.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 [N,H,W] or [N,C,H,W], got {array.dtype} {array.shape}")
        self.item_shape: tuple[int, ...] = array.shape[1:] if array.ndim == 4 else (1, *array.shape[1:])
        self.images = np.ascontiguousarray(array).reshape(len(array), *self.item_shape)
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
        self._rotated = self._rotated_rows = self._both_parities = None
        if cache_rotations and self.rotation is not None:
            pairs, self._rotated_rows = np.unique(self.image_index * 4 + self.rotation, return_inverse=True)
            self._rotated = np.empty((len(pairs), *self.item_shape), dtype=np.uint8)
            for k in range(4):
                rows = np.flatnonzero(pairs % 4 == k)
                self._rotated[rows] = np.rot90(self.images[pairs[rows] // 4], k, axes=(-2, -1))
        elif self.rotation is not None:
            # Per item: its row in [images; quarter-turned images], and whether a half turn remains.
            odd = (self.rotation & 1).astype(np.int64)
            self._parity_rows = self.image_index + odd * len(self.images)
            self._half_turned = self.rotation >= 2
            self._needs_quarter = bool(odd.any())

    @classmethod
    def from_arrays(cls, source: Any, *, cache_rotations: bool = False) -> TensorStore:
        """Wrap an object exposing `images`, `image_index` and `rotation`."""
        return cls(source.images, source.image_index, source.rotation, cache_rotations=cache_rotations)

    def __len__(self) -> int:
        return len(self.image_index)

    def gather_uint8(self, items: np.ndarray | Sequence[int]) -> np.ndarray:
        """Return items as a uint8 numpy array [n, C, H, W], rotations applied."""
        return self._gather(self._check_items(items))

    def gather(self, items: np.ndarray | Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return items as a tensor [n, C, H, W]: float in [0, 1] for a float dtype, else the raw uint8."""
        return torch.from_numpy(_convert(self.gather_uint8(items), dtype))

    def iter_episodes(self, draw: EpisodeDraw | MetaDatasetDraw, dtype: torch.dtype = torch.float32,
                      block: int = 4, with_classes: bool = False) -> Iterator[EpisodeTensors]:
        """Yield `(support_x, support_y, query_x, query_y)` for each drawn episode, and with
        `with_classes` a fifth tensor: the episode's class ids `[ways]` (episode label j is class `classes[j]`).

        Images are gathered `block` episodes at a time, in episode order (one gather each; small blocks stay
        in cache: 4 was fastest here). Float episodes are their own tensors; uint8 episodes are views of
        their block's buffer (so holding one keeps its block alive: ~250 KB for 5-way 16-item Omniglot).
        """
        fixed = isinstance(draw, EpisodeDraw) and len(draw) > 0 and draw.fixed_shape
        episodes = self._iter_fixed_shape(draw, dtype, block) if fixed else self._iter_any_shape(draw, dtype, block)
        if not with_classes:
            return episodes
        classes = (torch.from_numpy(draw.classes[e, :int(draw.ways[e])]) for e in range(len(draw)))
        return ((*episode, episode_classes) for episode, episode_classes in zip(episodes, classes))

    def _iter_any_shape(self, draw: EpisodeDraw | MetaDatasetDraw, dtype: torch.dtype,
                        block: int) -> Iterator[EpisodeTensors]:
        for start in range(0, len(draw), block):
            episodes = draw.slice(start, start + block).episodes()
            buffer = self._gather(np.concatenate([e.indices() for e in episodes]))
            offset = 0
            for e in episodes:
                n_support, n_items = len(e.support), len(e.support) + len(e.query)
                x = _convert(buffer[offset:offset + n_items], dtype)  # float episodes get their own memory
                offset += n_items
                yield (torch.from_numpy(x[:n_support]), torch.from_numpy(e.support_labels),
                       torch.from_numpy(x[n_support:]), torch.from_numpy(e.query_labels))

    def _iter_fixed_shape(self, draw: EpisodeDraw, dtype: torch.dtype, block: int) -> Iterator[EpisodeTensors]:
        # Episodes of one shape are sliced out of each block's buffer with a few tensor calls per block
        # (split, unbind), and their labels with a few per draw, rather than several calls per episode.
        count, ways, shots, queries = len(draw), int(draw.ways[0]), int(draw.shots[0]), draw.queries
        items = draw.items.reshape(count, ways, shots + queries)
        layout = np.concatenate([items[:, :, :shots].reshape(count, -1), items[:, :, shots:].reshape(count, -1)],
                                axis=1)
        n_support, n_query = ways * shots, ways * queries
        support_y = torch.from_numpy(np.tile(np.repeat(np.arange(ways), shots), (count, 1))).unbind(0)
        query_y = torch.from_numpy(np.tile(np.repeat(np.arange(ways), queries), (count, 1))).unbind(0)
        for start in range(0, count, block):
            stop = min(start + block, count)
            buffer = self._gather(layout[start:stop].reshape(-1))
            labels = zip(support_y[start:stop], query_y[start:stop])
            if dtype == torch.uint8:
                x = torch.from_numpy(buffer).view(stop - start, n_support + n_query, *self.item_shape)
                support_x, query_x = (part.unbind(0) for part in x.split([n_support, n_query], dim=1))
                for s_x, q_x, (s_y, q_y) in zip(support_x, query_x, labels):
                    yield s_x, s_y, q_x, q_y
            else:
                for e, (s_y, q_y) in enumerate(labels):
                    # numpy slices and wraps faster than torch indexes; float episodes get their own memory
                    x = _convert(buffer[e * (n_support + n_query):(e + 1) * (n_support + n_query)], dtype)
                    yield torch.from_numpy(x[:n_support]), s_y, torch.from_numpy(x[n_support:]), q_y

    def _check_items(self, items: np.ndarray | Sequence[int]) -> np.ndarray:
        items = np.asarray(items)
        if items.ndim != 1 or (items.size and not np.issubdtype(items.dtype, np.integer)):
            raise ValueError(f"items must be a 1-D array of ints, got shape {items.shape} dtype {items.dtype}")
        if items.size and (items.min() < 0 or items.max() >= len(self)):
            raise IndexError(f"items must lie in [0, {len(self)}), got {items.min()}..{items.max()}")
        return items.astype(np.int64, copy=False)

    def _with_quarter_turns(self) -> np.ndarray:
        """`[images; images turned a quarter]`, made on first need, so one take reads either parity."""
        if self._both_parities is None:
            self._both_parities = np.concatenate([self.images, np.rot90(self.images, 1, axes=(-2, -1))])
        return self._both_parities

    def _gather(self, items: np.ndarray) -> np.ndarray:
        """Gather items [n, C, H, W] in order, rotations applied.

        One vectorised take reads even turns from the images and odd turns from their quarter-turned copy;
        half turns on top of that reverse each channel's pixels (one torch flip for all such items).
        """
        buffer = np.empty((len(items), *self.item_shape), dtype=np.uint8)
        # take(mode="clip") writes straight into `out` (mode="raise" buffers); rows are valid here.
        if self._rotated is not None:
            return np.take(self._rotated, self._rotated_rows[items], axis=0, out=buffer, mode="clip")
        if self.rotation is None:
            return np.take(self.images, self.image_index[items], axis=0, out=buffer, mode="clip")
        source = self._with_quarter_turns() if self._needs_quarter else self.images
        np.take(source, self._parity_rows[items], axis=0, out=buffer, mode="clip")
        half = np.flatnonzero(self._half_turned[items])
        if len(half):
            # A half turn reverses each channel's pixels; torch's flip is vectorised, numpy's [::-1] copy is not.
            pixels = buffer.reshape(len(buffer), self.item_shape[0], -1)
            pixels[half] = torch.from_numpy(pixels.take(half, axis=0)).flip(-1).numpy()
        return buffer


_FLOAT_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _convert(images: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """uint8 images as they are for torch.uint8, else floats x / 255 in [0, 1]."""
    if dtype == torch.uint8:
        return images
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be torch.uint8, float16, float32 or float64, got {dtype}")
    return np.divide(images, 255, dtype=_FLOAT_DTYPES[dtype])


class EpisodeDataset(IterableDataset):
    """Episodes as `(support_x, support_y, query_x, query_y)`, sharded over DataLoader workers and ranks.

    Shard `rank + world_size * worker_id` of `world_size * num_workers` (worker id from
    `torch.utils.data.get_worker_info()`), so shards are disjoint and a DataLoader (batch_size=None)
    yields, in order, exactly this rank's single-process stream. `source` is a `TensorStore`, an object
    with a `tensor_store` attribute (used as is) or with `images`/`image_index`/`rotation` (fast path:
    episodes drawn `chunk` at a time, images gathered a few episodes at a time), or any map-style
    dataset of `(x, y)` items (fetched one by one and collated). With `with_classes`, each episode also
    carries its class ids `[ways]` (label j of the episode is class `classes[j]` of the sampler's labels).
    """

    def __init__(self, sampler: EpisodeSampler, source: Any, *, start: int = 0, rank: int | None = None,
                 world_size: int | None = None, dtype: torch.dtype = torch.float32, chunk: int = 256,
                 with_classes: bool = False) -> None:
        self.sampler = sampler
        self.with_classes = with_classes
        if isinstance(source, TensorStore):
            self.store = source
        elif isinstance(getattr(source, "tensor_store", None), TensorStore):  # a source that keeps its own store
            self.store = source.tensor_store
        elif all(hasattr(source, name) for name in ("images", "image_index", "rotation")):
            self.store = TensorStore.from_arrays(source)
        else:
            self.store = None
        self.source = source
        self.start = start
        self.rank, self.world_size = _rank_and_size(rank, world_size)
        self.dtype = dtype
        self.chunk = chunk
        refuse_dirichlet_queries(sampler)
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
                yield from self.store.iter_episodes(draw, self.dtype, with_classes=self.with_classes)
            else:
                for episode in draw.episodes():
                    tensors = self.collate([self.source[int(i)] for i in episode.indices()])
                    yield (*tensors, torch.from_numpy(episode.classes)) if self.with_classes else tensors
