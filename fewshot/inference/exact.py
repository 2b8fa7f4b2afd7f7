"""Exact k-nearest-neighbour search in any distance, in blocks that bound memory."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

#: Queries per exact-search block, and the float32 elements one block of distances may hold (64 MB).
QUERY_CHUNK = 1024
BLOCK_ELEMENTS = 1 << 24


@torch.no_grad()
def exact_search(distance: Callable[[Tensor, Tensor], Tensor], queries: Tensor, gallery: Tensor, k: int,
                 exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(distances, indices) [q, k] of the k nearest gallery rows of each query under `distance`, nearest first.

    Blocks of `QUERY_CHUNK` queries by as many gallery rows as fit `BLOCK_ELEMENTS`, keeping a running top-k,
    so memory stays at one block whatever the gallery size. `exclude` [q] names one gallery row per query to
    leave out (the query itself, when gallery items query the gallery). Runs on the gallery's device.
    """
    n = gallery.shape[0]
    if not 1 <= k <= n - (exclude is not None):
        raise ValueError(f"k={k} must be in [1, {n - (exclude is not None)}] for a gallery of {n} items")
    queries = queries.to(gallery.device)
    out_d, out_i = [], []
    for q0 in range(0, len(queries), QUERY_CHUNK):
        query = queries[q0:q0 + QUERY_CHUNK]
        columns = max(k, BLOCK_ELEMENTS // max(1, len(query)))
        best_d = torch.full((len(query), 0), math.inf, device=gallery.device)
        best_i = torch.zeros((len(query), 0), dtype=torch.long, device=gallery.device)
        for g0 in range(0, n, columns):
            block = distance(query, gallery[g0:g0 + columns]).float()
            if exclude is not None:
                own = exclude[q0:q0 + QUERY_CHUNK].to(gallery.device) - g0
                rows = torch.nonzero((own >= 0) & (own < block.shape[1])).flatten()
                block[rows, own[rows]] = math.inf
            top = min(k, block.shape[1])
            block_d, block_i = torch.topk(block, top, dim=1, largest=False, sorted=True)
            # Earlier blocks first, then a stable sort: equal distances keep gallery order across blocks.
            merged_d = torch.cat([best_d, block_d], dim=1)
            merged_i = torch.cat([best_i, block_i + g0], dim=1)
            order = torch.sort(merged_d, dim=1, stable=True).indices[:, :k]
            best_d, best_i = merged_d.gather(1, order), merged_i.gather(1, order)
        out_d.append(best_d)
        out_i.append(best_i)
    return torch.cat(out_d).cpu(), torch.cat(out_i).cpu()


def recall_against_exact(approximate: Tensor, exact: Tensor) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k (index tensors [q, k])."""
    if approximate.shape != exact.shape or exact.numel() == 0:
        raise ValueError(f"need two [q, k] index tensors of one shape, got {tuple(approximate.shape)} and "
                         f"{tuple(exact.shape)}")
    k = exact.shape[1]
    hits = (approximate[:, :, None] == exact[:, None, :]).any(dim=2).sum(dim=1)
    return float(hits.double().mean() / k)
