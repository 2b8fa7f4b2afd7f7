"""Meta-Dataset's variable-way, variable-shot, class-imbalanced episodes (Triantafillou et al. 2020,
"Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples", section 3.2), as a
seeded, random-access sampler (numpy only).

This is the benchmark's episode procedure, not learn2learn's `MetaDataset` class. Like `EpisodeSampler`,
every random number is a counter-based hash of (seed, stream, episode index, position), so episode `i`
is a pure function of `(seed, i)`, identical in any process and shard, and a chunk of episodes is drawn
with vectorised numpy even though each episode has its own ways, queries and per-class shots.
docs/episodes.md gives the procedure formula by formula against the paper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .sampler import Episode, EpisodeSampler, choose_subsets, counter_randint, counter_uniform

# This sampler's own random streams (EpisodeSampler uses 0-3, pairs 10-22; choose_subsets adds 100).
STREAM_WAYS, STREAM_CLASSES, STREAM_BUDGET, STREAM_LOG_WEIGHTS, STREAM_ITEMS = 30, 31, 32, 33, 34


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class MetaDatasetDraw:
    """Vectorised draw of several variable, imbalanced episodes: the raw arrays behind their `Episode`s.

    Row r = (episode, way), episode-major. `classes[e, :ways[e]]` are episode e's class ids;
    `items[r, :support_counts[r] + queries[e]]` are row r's dataset indices, support first; padding is -1.
    `budget[e]` (the support set size |S| drawn for episode e) and `log_weights[r]` (the class's alpha_c)
    are the procedure's intermediate draws, kept so that tests and users can check the formulas.
    """

    indices: np.ndarray
    ways: np.ndarray
    queries: np.ndarray
    support_counts: np.ndarray
    budget: np.ndarray
    log_weights: np.ndarray
    classes: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def row_starts(self) -> np.ndarray:
        """First row of each episode."""
        return np.cumsum(self.ways) - self.ways

    def slice(self, start: int, stop: int) -> MetaDatasetDraw:
        """The draw of episodes start..stop-1 (positions in this draw)."""
        first_row, last_row = int(self.ways[:start].sum()), int(self.ways[:stop].sum())
        return MetaDatasetDraw(indices=self.indices[start:stop], ways=self.ways[start:stop],
                               queries=self.queries[start:stop],
                               support_counts=self.support_counts[first_row:last_row],
                               budget=self.budget[start:stop], log_weights=self.log_weights[first_row:last_row],
                               classes=self.classes[start:stop], items=self.items[first_row:last_row])

    def episodes(self) -> list[Episode]:
        """Split the arrays into one `Episode` per drawn index (support and query class-major)."""
        episodes = []
        columns = np.arange(self.items.shape[1])[None, :]
        row = 0
        for e, index in enumerate(self.indices):
            ways, queries = int(self.ways[e]), int(self.queries[e])
            rows, shots = self.items[row:row + ways], self.support_counts[row:row + ways]
            row += ways
            in_support = columns < shots[:, None]
            in_query = ~in_support & (columns < shots[:, None] + queries)
            labels = np.arange(ways)
            episodes.append(Episode(
                index=int(index),
                classes=self.classes[e, :ways].copy(),
                support=rows[in_support],  # boolean masks read row-major: class-major order
                support_labels=np.repeat(labels, shots),
                query=rows[in_query],
                query_labels=np.repeat(labels, queries),
            ))
        return episodes


class MetaDatasetSampler(EpisodeSampler):
    """Meta-Dataset's episodes over a labels array, each a pure function of (seed, episode index).

    Per episode (Triantafillou et al. 2020, section 3.2, and the public meta_dataset/data/sampling.py):
    ways uniform in [min_ways, min(max_ways, classes)]; classes uniform without replacement; one query
    count for every class, q = min(max_num_query, min_c floor(|c| / 2)); a support set size
    |S| = min(max_support_set_size, sum_c ceil(beta * min(max_support_size_contrib_per_class, |c| - q)))
    with beta ~ U(0, 1]; class c gets min(floor(R_c * (|S| - ways)) + 1, |c| - q) support items, where
    R_c is proportional to |c| * exp(alpha_c), alpha_c ~ U[min_log_weight, max_log_weight]. Items are
    drawn uniformly without replacement within a class, support and query disjoint.

    Args:
        labels: integer class per dataset item, or any object with a `.labels` attribute.
        min_ways, max_ways: the range of ways (max_ways is capped by the classes available).
        max_num_query: the cap on query items per class.
        max_support_set_size: the cap on the support set size |S|.
        max_support_size_contrib_per_class: the cap on one class's contribution to |S| (not on its shots,
            as in the paper's code).
        min_log_weight, max_log_weight: the range of the log-weights alpha_c.
        classes, seed, num_episodes: as for `EpisodeSampler`.
        too_small: classes with fewer than 2 items (one support, one query): "error" (default) raises
            naming them; "exclude" drops them, warns, and lists them in `excluded`.
    """

    _ways_name = "min_ways"
    _items_name = "one support + one query item"

    def __init__(
        self,
        labels: Any,
        *,
        min_ways: int = 5,
        max_ways: int = 50,
        max_num_query: int = 10,
        max_support_set_size: int = 500,
        max_support_size_contrib_per_class: int = 100,
        min_log_weight: float = math.log(0.5),
        max_log_weight: float = math.log(2),
        classes: Iterable[int] | None = None,
        seed: int = 0,
        num_episodes: int | None = None,
        too_small: Literal["error", "exclude"] = "error",
    ) -> None:
        min_ways = _positive_int("min_ways", min_ways)
        if min_ways < 2:
            # One class is no classification task, and the collate finds the query block where class 0 returns.
            raise ValueError(f"min_ways must be >= 2, got {min_ways}")
        max_ways = _positive_int("max_ways", max_ways)
        if max_ways < min_ways:
            raise ValueError(f"max_ways must be >= min_ways = {min_ways}, got {max_ways}")
        self.max_num_query = _positive_int("max_num_query", max_num_query)
        self.max_support_set_size = _positive_int("max_support_set_size", max_support_set_size)
        self.max_support_size_contrib_per_class = _positive_int(
            "max_support_size_contrib_per_class", max_support_size_contrib_per_class)
        weights = (min_log_weight, max_log_weight)
        if not all(isinstance(w, (int, float, np.floating, np.integer)) and not isinstance(w, bool)
                   and math.isfinite(w) for w in weights) or min_log_weight > max_log_weight:
            raise ValueError(f"min_log_weight <= max_log_weight must be finite numbers, got {weights!r}")
        self.min_log_weight, self.max_log_weight = float(min_log_weight), float(max_log_weight)
        # One support and one query item per class is the least an episode needs (the paper's 2 images).
        super().__init__(labels, min_ways, 1, 1, classes=classes, seed=seed, num_episodes=num_episodes,
                         too_small=too_small)
        self.ways_range = (min_ways, min(max_ways, self.num_classes))
        if self.max_support_set_size < self.ways_range[1]:
            raise ValueError(f"max_support_set_size={self.max_support_set_size} cannot give one support item to "
                             f"each of up to {self.ways_range[1]} classes: raise it or lower max_ways")
        self.shots_range = (1, self.max_support_set_size)  # bounds on one class's support items
        self.queries = None  # one count per episode, not per sampler: the collate reads it from the layout
        # Which of choose_subsets' (equally uniform) draws to use depends on the sampler only, never on a chunk.
        widest = self.max_support_size_contrib_per_class + self.max_num_query
        self._items_by_keys = bool(self.class_sizes.max() <= max(64, 4 * widest))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ways={self.ways_range}, max_num_query={self.max_num_query}, "
                f"max_support_set_size={self.max_support_set_size}, max_support_size_contrib_per_class="
                f"{self.max_support_size_contrib_per_class}, log_weights=({self.min_log_weight:.4g}, "
                f"{self.max_log_weight:.4g}), classes={self.num_classes}, seed={self.seed}, "
                f"num_episodes={self.num_episodes})")

    def draw(self, indices: Sequence[int] | np.ndarray) -> MetaDatasetDraw:  # type: ignore[override]
        """Draw the episodes at `indices` together; return their raw arrays (see `MetaDatasetDraw`)."""
        indices = self.checked_indices(indices)
        seed, count = self.seed, len(indices)
        low, high = self.ways_range
        ways = low + counter_randint(seed, STREAM_WAYS, high - low + 1, indices)
        positions = choose_subsets(seed, STREAM_CLASSES, indices, np.zeros_like(indices), self.num_classes, ways)
        row_episode = np.repeat(np.arange(count), ways)
        starts = np.cumsum(ways) - ways
        row_slot = np.arange(len(row_episode)) - starts[row_episode]
        row_class = positions[row_episode, row_slot]
        sizes = self.class_sizes[row_class]
        if count == 0:
            empty = np.zeros(0, dtype=np.int64)
            return MetaDatasetDraw(indices=indices, ways=empty, queries=empty, support_counts=empty, budget=empty,
                                   log_weights=np.zeros(0), classes=np.zeros((0, 0), dtype=np.int64),
                                   items=np.zeros((0, 0), dtype=np.int64))

        # q = min(max_num_query, min_c floor(|c| / 2)): the same for every class of the episode.
        queries = np.minimum(self.max_num_query, np.minimum.reduceat(sizes // 2, starts))
        remaining = sizes - queries[row_episode]
        # |S| = min(max_support_set_size, sum_c ceil(beta * min(contrib, |c| - q))), beta ~ U(0, 1]:
        # floor(beta * x + 1) is that ceiling for beta in (0, 1], and is >= 1, so |S| >= ways.
        beta = 1.0 - counter_uniform(seed, STREAM_BUDGET, indices)
        contributions = np.floor(beta[row_episode] * np.minimum(self.max_support_size_contrib_per_class, remaining) + 1)
        budget = np.minimum(self.max_support_set_size, np.add.reduceat(contributions, starts)).astype(np.int64)
        # R_c proportional to |c| * exp(alpha_c), alpha_c ~ U[min_log_weight, max_log_weight];
        # k_c = min(floor(R_c * (|S| - ways)) + 1, |c| - q): at least one support item per class.
        log_weights = self.min_log_weight + (self.max_log_weight - self.min_log_weight) * counter_uniform(
            seed, STREAM_LOG_WEIGHTS, indices[row_episode], row_slot)
        unnormalised = sizes * np.exp(log_weights)
        shares = unnormalised / np.add.reduceat(unnormalised, starts)[row_episode]
        support = np.minimum(np.floor(shares * (budget - ways)[row_episode]).astype(np.int64) + 1, remaining)

        picks = choose_subsets(seed, STREAM_ITEMS, indices[row_episode], row_slot, sizes,
                               support + queries[row_episode], by_keys=self._items_by_keys)
        items = self.members[self.offsets[row_class][:, None] + np.maximum(picks, 0)]
        items[picks < 0] = -1
        classes = self.class_ids[np.maximum(positions, 0)]
        classes[positions < 0] = -1
        return MetaDatasetDraw(indices=indices, ways=ways, queries=queries.astype(np.int64), support_counts=support,
                               budget=budget, log_weights=log_weights, classes=classes, items=items)


__all__ = ["MetaDatasetDraw", "MetaDatasetSampler"]
