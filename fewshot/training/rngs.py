"""The per-episode random number generators of a training run, each a pure function of (seed, episode),
so that a resumed run draws exactly what an uninterrupted one does."""

from __future__ import annotations

import torch


def episode_seed(seed: int, episode: int) -> int:
    """The one integer each per-episode generator of a run derives from (distinct per (seed, episode)
    for episode numbers below 1,000,003)."""
    return seed * 1_000_003 + episode


def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The torch RNG a learner may use in episode `episode` (miners), a pure function of (seed, episode)."""
    return torch.Generator().manual_seed(episode_seed(seed, episode))


def augment_generator(seed: int, episode: int) -> torch.Generator:
    """The augmentation RNG of episode `episode`, a pure function of (seed, episode) and separate from
    the learner's (so turning augmentation on leaves the miners' draws unchanged)."""
    return torch.Generator().manual_seed(episode_seed(seed, episode) * 2 + 1 + (1 << 40))


__all__ = ["augment_generator", "episode_generator", "episode_seed"]
