"""Tiny training runs and fixed episodes for the learner tests (plain functions, no pytest fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from episodes import EpisodeSampler
from fewshot.data.splits import ClassSplit
from fewshot.training import TrainConfig, train

#: A tiny 5-way 1-shot run: a few dozen training episodes, one validation, a small test report.
TINY_RUN = {"ways": 5, "shots": 1, "train_ways": 5, "queries": 3, "eval_queries": 5, "episodes": 40,
            "val_every": 40, "val_episodes": 5, "test_episodes": 5, "threads": 1, "seed": 3}


def train_tiny(output: Path, data_root: Path, **settings: Any) -> Path:
    """Train `TINY_RUN` (with `settings` on top) on the Omniglot at `data_root`; returns its best.pt."""
    train(TrainConfig(**{**TINY_RUN, **settings}, data_root=str(data_root), output=str(output)), progress=False)
    return output / "best.pt"


def episode_tensors(split: ClassSplit, index: int = 0, ways: int = 5, shots: int = 1,
                    queries: int = 5) -> tuple[torch.Tensor, ...]:
    """(support_x, support_y, query_x, query_y) of episode `index` (seed 0) of `split`."""
    sampler = EpisodeSampler(split.labels, ways=ways, shots=shots, queries=queries, seed=0)
    return split.episode_tensors(sampler.episode(index))
