"""Seeded, random-access N-way K-shot episode sampler over a labels array (numpy only).

Every random number is a counter-based hash of (seed, stream, episode index, position), so episode
`i` is a pure function of `(seed, i)`: any episode can be drawn alone, in any order, in any process,
and many episodes can be drawn at once with vectorised numpy.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Size = int | tuple[int, int]

# Independent random streams: each kind of decision hashes its own stream id.
# choose_subsets also uses stream + 100 for its ordering keys.
_STREAM_WAYS, _STREAM_SHOTS, _STREAM_CLASSES, _STREAM_ITEMS = range(4)
# Dirichlet query counts draw from numpy generators seeded (seed, _STREAM_QUERIES, episode, attempt).
_STREAM_QUERIES = 4
#: How many Dirichlet draws an episode may take before its classes are declared too small for its query counts.
DIRICHLET_ATTEMPTS = 1000

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche mix of uint64 values (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def counter_uniform(seed: int, stream: int, *counters: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1), one per broadcast element of `counters`, a pure function of all inputs."""
    with np.errstate(over="ignore"):
        h = _mix64(np.array([seed], dtype=np.uint64) * _GOLDEN + np.uint64(stream + 1) * _MIX1)
        for counter in counters:
            h = _mix64(h ^ np.asarray(counter, dtype=np.int64).astype(np.uint64) * _GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def counter_randint(seed: int, stream: int, high: np.ndarray | int, *counters: np.ndarray | int) -> np.ndarray:
    """Integers uniform in [0, high) (broadcast), a pure function of the inputs (bias at most high / 2**53)."""
    value = (counter_uniform(seed, stream, *counters) * high).astype(np.int64)
    return np.minimum(value, np.asarray(high) - 1)  # guard the float rounding edge


def choose_subsets(seed: int, stream: int, episode: np.ndarray, slot: np.ndarray,
                   n: np.ndarray | int, k: np.ndarray | int, *, by_keys: bool = False) -> np.ndarray:
    """Draw one uniform random k-subset of range(n) per row, in uniformly random order.

    Rows are keyed by (episode, slot), so a row's draw never depends on the other rows drawn with it.
    `by_keys=False` runs Floyd's algorithm vectorised over rows then shuffles by random keys: O(k^2),
    for large n. `by_keys=True` sorts one random key per element of range(n): O(n log n), for small n.
    The two give different (equally uniform) draws, so a sampler must always use the same one.
    Returns int64 [rows, max(k)], padded with -1 after each row's k entries.
    """
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), episode.shape)
    k = np.broadcast_to(np.asarray(k, dtype=np.int64), episode.shape)
    width = int(k.max()) if len(k) else 0
    episode, slot = episode[:, None], slot[:, None]
    if by_keys:
        columns = np.arange(int(n.max()) if len(n) else 0)
        keys = counter_uniform(seed, stream, episode, slot, columns[None, :])
        if len(n) and n.min() < len(columns):
            keys[columns[None, :] >= n[:, None]] = 2.0  # beyond the row's range: sorts last
        # 53-bit keys practically never tie (and a tie still sorts the same way every time).
        chosen = np.argsort(keys, axis=1)[:, :width]
    else:
        columns = np.arange(width)
        # Floyd: for j in n-k .. n-1 pick t in [0, j]; take j instead when t is already chosen.
        top = n[:, None] - k[:, None] + columns[None, :] + 1
        candidates = counter_randint(seed, stream, np.maximum(top, 1), episode, slot, columns[None, :])
        chosen = np.empty((len(episode), width), dtype=np.int64)
        for c in range(width):
            taken = (chosen[:, :c] == candidates[:, c, None]).any(axis=1)
            chosen[:, c] = np.where(taken, top[:, c] - 1, candidates[:, c])
        keys = counter_uniform(seed, stream + 100, episode, slot, columns[None, :])
        keys[columns[None, :] >= k[:, None]] = 2.0  # padding sorts last
        chosen = np.take_along_axis(chosen, np.argsort(keys, axis=1, kind="stable"), axis=1)
    if len(k) and k.min() < width:
        chosen[np.arange(width)[None, :] >= k[:, None]] = -1
    return chosen


def largest_remainders(proportions: np.ndarray, total: int) -> np.ndarray:
    """Whole counts summing to `total` from `proportions` (summing to 1): the floors of `proportions * total`,
    plus one for the largest fractional parts (ties to the lower index) until the sum is reached."""
    exact = np.asarray(proportions, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    missing = int(total - counts.sum())
    if missing > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:missing]] += 1
    return counts


def _size_range(name: str, value: Any) -> tuple[int, int]:
    """Validate a size given as an int or an inclusive (min, max) pair; return (min, max)."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be a positive int or a (min, max) pair of ints, got {value!r}")
    low, high = int(pair[0]), int(pair[1])
    if low < 1 or high < low:
        raise ValueError(f"{name} must be >= 1 (and min <= max for a range), got {value!r}")
    return low, high


def _is_int(value: Any) -> bool:
    """An int or numpy integer, not a bool (True would silently count as 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


_MAX_INDEX = np.iinfo(np.int64).max


def as_labels(labels: Any) -> np.ndarray:
    """Return a 1-D int64 labels array from an array-like or from an object's `.labels` (or `.targets`)."""
    for attribute in ("labels", "targets"):
        if not isinstance(labels, (np.ndarray, list, tuple)) and hasattr(labels, attribute):
            labels = getattr(labels, attribute)
            break
    if hasattr(labels, "numpy") and hasattr(labels, "detach"):  # a torch tensor, without importing torch
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("labels is empty: need at least one labelled item")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype} (first values {array[:5].tolist()})")
    return array.astype(np.int64, copy=False)


@dataclass(frozen=True)
class Episode:
    """One episode. Indices point into the dataset; labels are episode labels 0..ways-1.

    `support` and `query` are class-major: all items of `classes[0]` first, then `classes[1]`, ...
    """

    index: int
    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    @property
    def ways(self) -> int:
        """Number of classes in the episode."""
        return len(self.classes)

    @property
    def shots(self) -> int:
        """Support items per class; an imbalanced episode has none (see `support_counts`) and raises."""
        counts = self.support_counts
        if len(counts) and np.any(counts != counts[0]):
            raise ValueError(f"episode {self.index} is imbalanced (support items per class {counts.tolist()}): "
                             "it has no single shots; read support_counts")
        return len(self.support) // len(self.classes)

    @property
    def support_counts(self) -> np.ndarray:
        """Support items of each class, in episode-label order (all equal unless the episode is imbalanced)."""
        return np.bincount(self.support_labels, minlength=len(self.classes))

    @property
    def queries(self) -> int:
        """Query items per class; an episode with unequal query counts (Dirichlet queries) has none (see
        `query_counts`) and raises."""
        counts = self.query_counts
        if len(counts) and np.any(counts != counts[0]):
            raise ValueError(f"episode {self.index} has unequal query counts per class {counts.tolist()}: it has no "
                             "single queries; read query_counts")
        return len(self.query) // len(self.classes)

    @property
    def query_counts(self) -> np.ndarray:
        """Query items of each class, in episode-label order."""
        return np.bincount(self.query_labels, minlength=len(self.classes))

    def indices(self) -> np.ndarray:
        """Support then query dataset indices, as one array (the DataLoader batch_sampler layout)."""
        return np.concatenate([self.support, self.query])


@dataclass(frozen=True)
class EpisodeDraw:
    """Vectorised draw of several episodes: the raw arrays behind a list of `Episode`s.

    `classes[e, :ways[e]]` are episode e's class ids; `items[r, :shots+queries]` are the dataset indices
    of row r = (episode, way), support first; rows are ordered episode-major. Padding is -1. With Dirichlet
    queries, `query_counts[r]` replaces `queries` as row r's query count.
    """

    indices: np.ndarray
    ways: np.ndarray
    shots: np.ndarray
    queries: int
    classes: np.ndarray
    items: np.ndarray
    query_counts: np.ndarray | None = None

    @property
    def fixed_shape(self) -> bool:
        """True when every episode has the same ways, shots and query count per class."""
        return bool(len(self.ways) == 0 or (self.query_counts is None and np.all(self.ways == self.ways[0])
                                            and np.all(self.shots == self.shots[0])))

    def __len__(self) -> int:
        return len(self.indices)

    def slice(self, start: int, stop: int) -> EpisodeDraw:
        """The draw of episodes start..stop-1 (positions in this draw)."""
        first_row, last_row = int(self.ways[:start].sum()), int(self.ways[:stop].sum())
        return EpisodeDraw(indices=self.indices[start:stop], ways=self.ways[start:stop],
                           shots=self.shots[start:stop], queries=self.queries,
                           classes=self.classes[start:stop], items=self.items[first_row:last_row],
                           query_counts=None if self.query_counts is None else self.query_counts[first_row:last_row])

    def episodes(self) -> list[Episode]:
        """Split the arrays into one `Episode` per drawn index."""
        episodes = []
        row = 0
        for e, index in enumerate(self.indices):
            ways, shots = int(self.ways[e]), int(self.shots[e])
            rows = self.items[row:row + ways]
            labels = np.arange(ways)
            if self.query_counts is None:
                query = rows[:, shots:shots + self.queries].reshape(-1)
                query_labels = np.repeat(labels, self.queries)
            else:
                counts = self.query_counts[row:row + ways]
                query = rows[:, shots:][np.arange(rows.shape[1] - shots)[None, :] < counts[:, None]]
                query_labels = np.repeat(labels, counts)
            row += ways
            episodes.append(Episode(
                index=int(index),
                classes=self.classes[e, :ways].copy(),
                support=rows[:, :shots].reshape(-1),
                support_labels=np.repeat(labels, shots),
                query=query,
                query_labels=query_labels,
            ))
        return episodes


class EpisodeSampler:
    """N-way K-shot episodes over a labels array, each a pure function of (seed, episode index).

    Args:
        labels: integer class per dataset item, or any object with a `.labels` attribute.
        ways: classes per episode, an int or an inclusive (min, max) range drawn per episode.
        shots: support items per class, an int or an inclusive (min, max) range drawn per episode.
        queries: query items per class.
        classes: restrict episodes to these class ids (e.g. the base, val or novel classes).
        seed: non-negative int; episode i of seed s is the same everywhere.
        num_episodes: length of the stream; None for an endless stream.
        too_small: what to do with classes having fewer than max(shots) + queries items:
            "error" (default) raises naming them; "exclude" drops them, warns, and lists them in `excluded`.
        query_dirichlet: None (default) for `queries` query items of every class; a concentration alpha > 0 for
            class-imbalanced query sets (Veilleux et al. 2021, "Realistic evaluation of transductive few-shot
            learning", who use alpha = 2): each episode's class proportions are drawn from Dirichlet(alpha * 1)
            and turned into counts summing to `ways * queries` (largest remainders; a class may get none). An
            episode whose counts ask a class for more items than it has beyond its shots is redrawn (the next of
            up to `DIRICHLET_ATTEMPTS` seeded draws, so the counts follow the Dirichlet conditioned on fitting);
            after that many it raises. The classes, shots and episode stream are those of the balanced sampler.
    """

    def __init__(
        self,
        labels: Any,
        ways: Size,
        shots: Size,
        queries: int,
        *,
        classes: Iterable[int] | None = None,
        seed: int = 0,
        num_episodes: int | None = None,
        too_small: Literal["error", "exclude"] = "error",
        query_dirichlet: float | None = None,
    ) -> None:
        self.labels = as_labels(labels)
        if query_dirichlet is not None and (isinstance(query_dirichlet, bool)
                                            or not isinstance(query_dirichlet, (int, float, np.integer, np.floating))
                                            or not 0 < float(query_dirichlet) < float("inf")):
            raise ValueError(f"query_dirichlet must be None or a finite Dirichlet concentration > 0, "
                             f"got {query_dirichlet!r}")
        self.query_dirichlet = None if query_dirichlet is None else float(query_dirichlet)
        self.ways_range = _size_range("ways", ways)
        self.shots_range = _size_range("shots", shots)
        self.queries = self._check_queries(queries)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.seed = int(seed)
        if num_episodes is not None and (not _is_int(num_episodes) or num_episodes < 1):
            raise ValueError(f"num_episodes must be a positive int or None, got {num_episodes!r}")
        self.num_episodes = None if num_episodes is None else int(num_episodes)
        if too_small not in ("error", "exclude"):
            raise ValueError(f"too_small must be 'error' or 'exclude', got {too_small!r}")

        present, sizes = np.unique(self.labels, return_counts=True)
        if classes is not None:
            requested = np.asarray(list(classes))
            if requested.size == 0 or not np.issubdtype(requested.dtype, np.integer):
                raise ValueError(f"classes must be a non-empty list of integer class ids, got {requested.tolist()!r}")
            values, counts = np.unique(requested, return_counts=True)
            if np.any(counts > 1):
                raise ValueError(f"classes has duplicates: {values[counts > 1].tolist()}")
            missing = np.setdiff1d(requested, present)
            if missing.size:
                raise ValueError(f"classes {missing.tolist()[:20]} ({missing.size} in all) have no items in labels")
            keep = np.isin(present, requested)
            present, sizes = present[keep], sizes[keep]

        needed = self.shots_range[1] + self.queries
        small = sizes < needed
        self.excluded: dict[int, int] = {int(c): int(s) for c, s in zip(present[small], sizes[small])}
        if self.excluded:
            listing = ", ".join(f"class {c}: {s} items" for c, s in list(self.excluded.items())[:20])
            message = (f"{len(self.excluded)} classes have fewer than {self._items_name} = {needed} items ({listing}"
                       f"{', ...' if len(self.excluded) > 20 else ''})")
            if too_small == "error":
                raise ValueError(message + "; pass too_small='exclude' to leave them out")
            warnings.warn(message + "; excluded from episodes (see sampler.excluded)", stacklevel=2)
            present, sizes = present[~small], sizes[~small]
        if self.ways_range[1] > len(present):
            raise ValueError(f"{self._ways_name}={ways!r} needs {self.ways_range[1]} classes but only {len(present)} "
                             f"are available{' after exclusions' if self.excluded else ''}")

        self.class_ids = present
        self.class_sizes = sizes
        # Items grouped by class, so class c's items are members[offsets[c]:offsets[c] + sizes[c]].
        eligible = np.isin(self.labels, present)
        position = np.searchsorted(present, self.labels)
        by_class = np.argsort(np.where(eligible, position, len(present)), kind="stable")
        self.members = by_class[: int(sizes.sum())]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        # Sorting one key per item is faster than Floyd while classes are small next to a draw.
        self._items_by_keys = bool(sizes.max() <= max(64, 4 * needed))

    # How messages name the episode size and the items a class must hold (a subclass names its own parameters).
    _ways_name: str = "ways"
    _items_name: str = "shots + queries"

    @staticmethod
    def _check_queries(queries: Any) -> int:
        """The validated query count: a single int >= 1 (a subclass may allow other values)."""
        value = _size_range("queries", queries)[0]
        if isinstance(queries, (tuple, list)):
            raise ValueError(f"queries must be a single int (the collate infers shots from it), got {queries!r}")
        return value

    @property
    def num_classes(self) -> int:
        """Number of classes episodes are drawn from."""
        return len(self.class_ids)

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("this sampler is endless (num_episodes=None) and has no length")
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        return self.iterate()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ways={self.ways_range}, shots={self.shots_range}, queries={self.queries}, "
                f"classes={self.num_classes}, seed={self.seed}, num_episodes={self.num_episodes})")

    def episode(self, index: int) -> Episode:
        """Return episode `index` (random access)."""
        return self.draw([index]).episodes()[0]

    def episodes(self, indices: Sequence[int] | np.ndarray) -> list[Episode]:
        """Return the episodes at `indices`, drawn together (vectorised)."""
        return self.draw(indices).episodes()

    def episode_indices(self, start: int = 0, *, shard: int = 0, num_shards: int = 1) -> Iterator[int]:
        """Episode indices of shard `shard` of `num_shards`: start + shard, start + shard + num_shards, ...

        The shards are disjoint and together give start, start + 1, ... (up to num_episodes).
        """
        if not _is_int(start) or start < 0:
            raise ValueError(f"start must be a non-negative int, got {start!r}")
        if not _is_int(num_shards) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
        if not _is_int(shard) or not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}), got {shard!r}")
        first = int(start) + int(shard)
        if self.num_episodes is None:
            return itertools.count(first, int(num_shards))
        return iter(range(first, self.num_episodes, int(num_shards)))

    def iterate(self, start: int = 0, *, shard: int = 0, num_shards: int = 1, chunk: int = 64) -> Iterator[Episode]:
        """Yield the episodes of `episode_indices(start, shard=, num_shards=)`, drawn `chunk` at a time."""
        for indices in self.index_chunks(start, shard=shard, num_shards=num_shards, chunk=chunk):
            yield from self.draw(indices).episodes()

    def index_chunks(self, start: int = 0, *, shard: int = 0, num_shards: int = 1, chunk: int = 64) -> Iterator[np.ndarray]:
        """Episode indices of a shard, grouped into arrays of up to `chunk` (for vectorised draws)."""
        if not _is_int(chunk) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        indices = self.episode_indices(start, shard=shard, num_shards=num_shards)
        while True:
            block = np.fromiter(itertools.islice(indices, int(chunk)), dtype=np.int64)
            if block.size == 0:
                return
            yield block

    def draw(self, indices: Sequence[int] | np.ndarray) -> EpisodeDraw:
        """Draw the episodes at `indices` together; return their raw arrays (see `EpisodeDraw`)."""
        indices = self.checked_indices(indices)
        seed, queries = self.seed, self.queries
        ways = self._draw_sizes(_STREAM_WAYS, self.ways_range, indices)
        shots = self._draw_sizes(_STREAM_SHOTS, self.shots_range, indices)
        zeros = np.zeros_like(indices)
        positions = choose_subsets(seed, _STREAM_CLASSES, indices, zeros, self.num_classes, ways)
        row_episode = np.repeat(np.arange(len(indices)), ways)
        row_slot = np.arange(len(row_episode)) - np.repeat(np.cumsum(ways) - ways, ways)
        row_class = positions[row_episode, row_slot]
        query_counts = None
        if self.query_dirichlet is not None:
            query_counts = self._dirichlet_counts(indices, ways, shots, row_class)
        row_queries = queries if query_counts is None else query_counts
        picks = choose_subsets(seed, _STREAM_ITEMS, indices[row_episode], row_slot,
                               self.class_sizes[row_class], shots[row_episode] + row_queries,
                               by_keys=self._items_by_keys)
        items = self.members[self.offsets[row_class][:, None] + np.maximum(picks, 0)]
        classes = self.class_ids[np.maximum(positions, 0)]
        if (self.ways_range[0] != self.ways_range[1] or self.shots_range[0] != self.shots_range[1]
                or query_counts is not None):
            items[picks < 0] = -1  # variable sizes leave padding
            classes[positions < 0] = -1
        return EpisodeDraw(indices=indices, ways=ways, shots=shots, queries=queries, classes=classes, items=items,
                           query_counts=query_counts)

    def _dirichlet_counts(self, indices: np.ndarray, ways: np.ndarray, shots: np.ndarray,
                          row_class: np.ndarray) -> np.ndarray:
        """Each row's query count: per episode, Dirichlet(alpha * 1) proportions of `ways * queries` queries that
        fit its classes (see `query_dirichlet`), each episode's draw a pure function of (seed, episode index)."""
        counts = np.empty(len(row_class), dtype=np.int64)
        row = 0
        for e, index in enumerate(indices.tolist()):
            way_count = int(ways[e])
            room = self.class_sizes[row_class[row:row + way_count]] - int(shots[e])
            total = self.queries * way_count
            for attempt in range(DIRICHLET_ATTEMPTS):
                generator = np.random.default_rng([self.seed, _STREAM_QUERIES, index, attempt])
                drawn = largest_remainders(generator.dirichlet(np.full(way_count, self.query_dirichlet)), total)
                if np.all(drawn <= room):
                    break
            else:
                raise ValueError(
                    f"episode {index}: none of {DIRICHLET_ATTEMPTS} Dirichlet({self.query_dirichlet:g}) draws of "
                    f"{total} queries fits its classes, which hold {room.tolist()} items beyond the support; use "
                    "fewer queries per class, a larger concentration, or classes with more items")
            counts[row:row + way_count] = drawn
            row += way_count
        return counts

    def checked_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Episode indices as int64, refused (naming the value) unless 1-D, >= 0 and below num_episodes."""
        raw = indices
        indices = np.asarray(indices)
        if indices.ndim == 1 and indices.dtype == object and all(_is_int(i) for i in indices):
            # Python ints beyond 64 bits: numpy keeps them as objects
            bad = next(int(i) for i in indices if not 0 <= i <= _MAX_INDEX)
            raise IndexError(f"episode indices must be >= 0, got {bad}" if bad < 0 else
                             f"episode index {bad} is too large; indices are at most 2**63 - 1")
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(f"episode indices must be a 1-D sequence of ints, got {raw!r}")
        if indices.size and np.issubdtype(indices.dtype, np.unsignedinteger) and indices.max() > _MAX_INDEX:
            # Checked before the int64 conversion, which would wrap 2**63 to a negative number.
            raise IndexError(f"episode index {int(indices.max())} is too large; indices are at most 2**63 - 1")
        indices = indices.astype(np.int64)
        if indices.size and indices.min() < 0:
            raise IndexError(f"episode indices must be >= 0, got {indices.min()}")
        if indices.size and self.num_episodes is not None and indices.max() >= self.num_episodes:
            raise IndexError(f"episode index {indices.max()} out of range for num_episodes={self.num_episodes}")
        return indices

    def _draw_sizes(self, stream: int, size_range: tuple[int, int], indices: np.ndarray) -> np.ndarray:
        low, high = size_range
        if low == high:
            return np.full(len(indices), low, dtype=np.int64)
        return low + counter_randint(self.seed, stream, high - low + 1, indices)
