"""Approximate search through faiss: back-ends registered by name in `ANN_BACKENDS` ("ivf", "hnsw"), each
knowing how to build its structure and which search-time setting trades recall for speed. faiss is an optional
dependency, imported when a structure is built or loaded. Exact search (`fewshot.inference.exact`) needs no
back-end: every index has it, and approximate recall is measured against it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fewshot.registry import Registry


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
        if self.kind not in ANN_BACKENDS:
            raise ValueError(f"unknown approximate index {self.kind!r}; expected one of {', '.join(ANN_BACKENDS)}")
        for name in ("nprobe", "m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist must be a positive int, got {self.nlist!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "m": self.m,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search, "seed": self.seed}


class AnnBackend:
    """A faiss structure: how to build it over vectors in a metric's coordinates ("l2" or "ip"), and its one
    search-time setting (`search_parameter`, a field of `AnnSettings`) that trades recall for speed."""

    #: The structure's name in messages ("IVF", "HNSW").
    title: ClassVar[str] = ""
    #: The `AnnSettings` field read at search time.
    search_parameter: ClassVar[str] = ""

    def build(self, faiss: Any, vectors: np.ndarray, metric: Any, settings: AnnSettings) -> Any:
        """The faiss index over float32 `vectors` [n, d], with `metric` a faiss METRIC_ constant."""
        raise NotImplementedError

    def set_search_parameter(self, index: Any, value: int) -> None:
        """Apply `search_parameter` = `value` to a built `index`."""
        raise NotImplementedError

    def before_search(self, index: Any, settings: AnnSettings, k: int) -> None:
        """Adjust `index` for a search of `k` neighbours (nothing by default)."""


#: Approximate search back-ends by name (`AnnSettings.kind`, `--ann`).
ANN_BACKENDS: Registry = Registry("approximate index")


@ANN_BACKENDS.register("ivf")
class IVFFlat(AnnBackend):
    """Inverted file: vectors in `nlist` k-means cells, `nprobe` cells visited per query."""

    title = "IVF"
    search_parameter = "nprobe"

    def build(self, faiss: Any, vectors: np.ndarray, metric: Any, settings: AnnSettings) -> Any:
        n, d = vectors.shape
        nlist = settings.nlist or max(1, min(n // 39, int(round(4 * math.sqrt(n)))))  # faiss wants >= 39 points per cell
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatL2(d) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
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

    def set_search_parameter(self, index: Any, value: int) -> None:
        index.nprobe = min(value, index.nlist)


@ANN_BACKENDS.register("hnsw")
class HNSWFlat(AnnBackend):
    """Hierarchical navigable small-world graph: `m` links per node, `ef_search` candidates kept per query."""

    title = "HNSW"
    search_parameter = "ef_search"

    def build(self, faiss: Any, vectors: np.ndarray, metric: Any, settings: AnnSettings) -> Any:
        index = faiss.IndexHNSWFlat(vectors.shape[1], settings.m, metric)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
        index.add(vectors)
        return index

    def set_search_parameter(self, index: Any, value: int) -> None:
        index.hnsw.efSearch = value

    def before_search(self, index: Any, settings: AnnSettings, k: int) -> None:
        index.hnsw.efSearch = max(settings.ef_search, k)  # fewer candidates than k would answer short


def ann_backend(kind: str) -> AnnBackend:
    """The back-end registered as `kind`."""
    return ANN_BACKENDS.get_or_raise(kind)()


def build_faiss(vectors: np.ndarray, kind: str, settings: AnnSettings) -> Any:
    """A faiss index of `settings.kind` over float32 `vectors` [n, d] (already in the metric's coordinates;
    `kind` "l2" or "ip")."""
    faiss = import_faiss()
    metric = faiss.METRIC_L2 if kind == "l2" else faiss.METRIC_INNER_PRODUCT
    return ann_backend(settings.kind).build(faiss, vectors, metric, settings)
