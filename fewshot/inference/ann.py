"""Approximate search through faiss (IVF or HNSW): an optional back-end, imported when asked for."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ANN_KINDS = ("ivf", "hnsw")


def import_faiss() -> Any:
    """faiss, or an error saying how to install it (the `search` extra)."""
    try:
        import faiss  # noqa: PLC0415  (optional dependency)
    except ImportError as error:
        raise ImportError("approximate search needs faiss: pip install 'fewshot[search]' (faiss-cpu), or search "
                          "exactly (ann=None)") from error
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True


@dataclass
class AnnSettings:
    """An approximate index's structure and its recall/speed setting.

    IVF: `nlist` cells (default about 4 sqrt(n)), `nprobe` cells visited per query (more: higher recall, slower).
    HNSW: `m` links per node, `ef_construction` (build effort) and `ef_search` (candidates kept per query; more:
    higher recall, slower; at least k is used). Both store the vectors uncompressed ("Flat"), so the distances
    they return are exact for the neighbours they find.
    """

    kind: str
    nlist: int | None = None
    nprobe: int = 16
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ANN_KINDS:
            raise ValueError(f"unknown approximate index {self.kind!r}; expected one of {', '.join(ANN_KINDS)}")
        for name in ("nprobe", "m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be a positive int, got {self.nlist!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "m": self.m,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search, "seed": self.seed}


def build_faiss(vectors: np.ndarray, kind: str, settings: AnnSettings) -> Any:
    """A faiss IVF-Flat or HNSW-Flat index over float32 `vectors` [n, d] (already in the metric's coordinates)."""
    faiss = import_faiss()
    n, d = vectors.shape
    metric = faiss.METRIC_L2 if kind == "l2" else faiss.METRIC_INNER_PRODUCT
    if settings.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, settings.m, metric)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
        index.add(vectors)
        return index
    nlist = settings.nlist or max(1, min(n // 39, int(round(4 * math.sqrt(n)))))  # faiss wants >= 39 points per cell
    nlist = min(nlist, n)
    quantizer = faiss.IndexFlatL2(d) if kind == "l2" else faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
    index.cp.seed = settings.seed  # k-means of the cells: seeded, so a rebuild gives the same index
    # Train on a seeded sample of 64 points per cell (faiss warns below 39): the k-means costs
    # iterations x sample x nlist x d, the bulk of the build, and more points barely move the cells.
    sample = min(n, 64 * nlist)
    rows = np.sort(np.random.default_rng(settings.seed).choice(n, sample, replace=False)) if sample < n else slice(None)
    index.train(np.ascontiguousarray(vectors[rows]))
    index.add(vectors)
    index.nprobe = min(settings.nprobe, nlist)
    return index
