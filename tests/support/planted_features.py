"""Planted episode embeddings for head tests: Gaussian class clusters around random centres, optionally with the
query set shifted away from the support set, or with unequal query counts per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PlantedEpisode:
    """One episode's embeddings: support ``[ways * shots, d]`` and query ``[n_query, d]`` with labels 0..ways-1."""

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    ways: int


def planted_episode(ways: int = 5, shots: int = 1, queries: int | Sequence[int] = 15, dim: int = 16,
                    seed: int = 0, spread: float = 1.0, noise: float = 0.5, shift: float = 0.0,
                    non_negative: bool = False) -> PlantedEpisode:
    """An episode whose class ``k`` items are ``spread * centre_k + noise * N(0, 1)``; the queries are moved by
    ``shift`` along one random direction (a domain shift the support set does not have); ``queries`` is a count
    per class or a list of per-class counts; ``non_negative`` takes absolute values (post-ReLU-like features)."""
    generator = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(ways, dim, generator=generator)
    counts = [queries] * ways if isinstance(queries, int) else list(queries)
    support_labels = torch.arange(ways).repeat_interleave(shots)
    query_labels = torch.repeat_interleave(torch.arange(ways), torch.tensor(counts))
    support = centres[support_labels] + noise * torch.randn(len(support_labels), dim, generator=generator)
    query = centres[query_labels] + noise * torch.randn(len(query_labels), dim, generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(dim, generator=generator), dim=0)
    query = query + shift * direction
    if non_negative:
        support, query = support.abs(), query.abs()
    return PlantedEpisode(support, support_labels, query, query_labels, ways)
