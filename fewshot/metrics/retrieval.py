"""Leave-one-out retrieval: :func:`recall_at_k`, :func:`r_precision`, :func:`map_at_r` (Musgrave,
Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from fewshot.metrics.embeddings import (
    Distance,
    check_embeddings,
    pairwise,
    resolve_distance,
)


def _check_retrieval_classes(labels: Tensor) -> Tensor:
    """Per-item count of OTHER items of the same class (R in MAP@R)."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    singletons = classes[counts == 1]
    if singletons.numel():
        shown = ", ".join(str(c) for c in singletons[:10].tolist())
        more = f" and {singletons.numel() - 10} more" if singletons.numel() > 10 else ""
        raise ValueError(
            f"leave-one-out retrieval needs at least 2 items per class; classes with a single "
            f"item: {shown}{more}"
        )
    return counts[inverse] - 1


def _neighbour_chunks(
    embeddings: Tensor, k: int, distance: Distance, chunk_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(query indices, their k nearest other items)``, nearest first, chunk by chunk.

    Items at exactly equal distance are ordered as ``torch.topk`` returns them (unspecified);
    this only matters for duplicated embeddings.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    distance_fn = resolve_distance(distance, embeddings.shape[1])
    n = embeddings.shape[0]
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            queries = torch.arange(start, min(start + chunk_size, n))
            block = pairwise(distance_fn, embeddings[queries], embeddings).cpu()
            block[torch.arange(queries.numel()), queries] = torch.inf  # leave the query out
            yield queries, torch.topk(block, k, dim=1, largest=False, sorted=True).indices


def recall_at_k(
    embeddings: Tensor,
    labels: Tensor,
    k: int = 1,
    distance: Distance = torch.cdist,
    *,
    chunk_size: int = 1024,
) -> float:
    """Fraction of items with at least one same-class item among their ``k`` nearest others.

    Leave-one-out over the whole set (each item queries all the others), computed
    ``chunk_size`` queries at a time. Every class needs at least 2 items.
    """
    embeddings, labels = check_embeddings(embeddings, labels)
    n = embeddings.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} embeddings, got {k}")
    _check_retrieval_classes(labels)
    hits = 0
    for queries, neighbours in _neighbour_chunks(embeddings, k, distance, chunk_size):
        hits += int((labels[neighbours] == labels[queries][:, None]).any(dim=1).sum())
    return hits / n


def _relevance_at_r(
    embeddings: Tensor, labels: Tensor, distance: Distance, chunk_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Per chunk of queries: ``R`` (other items of the query's class), whether each of its ``max R``
    nearest other items is relevant (same class, within its first ``R``), and the ranks ``1..max R``."""
    embeddings, labels = check_embeddings(embeddings, labels)
    relevant_counts = _check_retrieval_classes(labels)
    max_r = int(relevant_counts.max())
    ranks = torch.arange(1, max_r + 1)
    for queries, neighbours in _neighbour_chunks(embeddings, max_r, distance, chunk_size):
        r = relevant_counts[queries]
        yield r, (labels[neighbours] == labels[queries][:, None]) & (ranks[None, :] <= r[:, None]), ranks


def map_at_r(
    embeddings: Tensor,
    labels: Tensor,
    distance: Distance = torch.cdist,
    *,
    chunk_size: int = 1024,
) -> float:
    """Mean average precision at R (Musgrave, Belongie & Lim, ECCV 2020), leave-one-out.

    For each query, R is the number of other items of its class, and
    ``AP@R = (1 / R) * sum_{i=1..R} P(i) * rel(i)`` where ``rel(i)`` says whether the i-th
    nearest other item shares the query's class and ``P(i)`` is the precision among the first
    i. MAP@R is the mean over all queries. Every class needs at least 2 items.
    """
    total = 0.0
    for r, relevant, ranks in _relevance_at_r(embeddings, labels, distance, chunk_size):
        precision = relevant.cumsum(dim=1) / ranks
        total += float(((precision * relevant).sum(dim=1) / r).sum())
    return total / len(labels)


def r_precision(
    embeddings: Tensor,
    labels: Tensor,
    distance: Distance = torch.cdist,
    *,
    chunk_size: int = 1024,
) -> float:
    """R-precision (Musgrave, Belongie & Lim, ECCV 2020), leave-one-out: for each query, R is the
    number of other items of its class and the score is the fraction of its R nearest other items
    that share its class; the mean over all queries. Every class needs at least 2 items.
    """
    total = 0.0
    for r, relevant, _ in _relevance_at_r(embeddings, labels, distance, chunk_size):
        total += float((relevant.sum(dim=1) / r).sum())
    return total / len(labels)
