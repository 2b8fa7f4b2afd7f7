"""Search a gallery in a trained model's own metric: `Index` (exact torch search, chunked; faiss IVF or HNSW
when faiss is installed), saved weights-only and tied to the weights that built it.

    from fewshot.api import load
    model = load("runs/proto/best.pt")
    index = model.index("gallery/")                 # streamed: a batch of images in memory at a time
    result = index.search(["query.png"], k=5)       # neighbours and distances in the model's metric
    index.save("gallery.index")
    index = model.load_index("gallery.index")       # refused if another checkpoint built it

The command line is `python -m fewshot.search build|query|verify|calibrate` (`fewshot.cli.search`). An index works
with any `fewshot.inference.inputs.Embedder` (a loaded `TrainedModel`); faiss structures are the back-ends of
`fewshot.inference.ann.ANN_BACKENDS`.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewshot.distances import metric_space
from fewshot.files import atomic_write, load_error_reason
from fewshot.inference.ann import (
    ANN_BACKENDS,
    AnnSettings,
    ann_backend,
    build_faiss,
    faiss_available,
    import_faiss,
)
from fewshot.inference.exact import exact_search, recall_against_exact
from fewshot.inference.images import embed_stream
from fewshot.inference.inputs import Embedder

INDEX_FORMAT = "fewshot-index"
INDEX_VERSION = 1

#: Gallery items sampled as queries to measure an approximate index's recall against exact search.
RECALL_SAMPLE = 1000
RECALL_K = 10


def _short(sha: str | None) -> str:
    return "unknown" if not sha else sha[:12]


@dataclass
class SearchResult:
    """Neighbours of each query, nearest first: `indices` and `distances` [q, k] (the model's distance),
    and per query the neighbours' item names (file paths, or `#row`) and labels (None without labels)."""

    indices: Tensor
    distances: Tensor
    items: list[list[str]]
    labels: list[list[Hashable]] | None
    queries: list[str]

    def neighbours(self, query: int) -> list[tuple[str, Hashable, float]]:
        """(item, label, distance) of each neighbour of query `query`."""
        labels = self.labels[query] if self.labels is not None else [None] * self.indices.shape[1]
        return [(item, label, float(d)) for item, label, d in zip(self.items[query], labels, self.distances[query])]

    def __len__(self) -> int:
        return len(self.indices)


class Index:
    """Embeddings of a gallery under one model, searched in that model's own distance.

    Exact search (torch, chunked) always works; `build_ann("ivf" | "hnsw")` adds a faiss structure for large
    galleries and measures its recall@10 against exact search on sampled gallery items (`ann_recall`).
    """

    def __init__(self, embedder: Embedder, embeddings: Tensor, items: Sequence[str],
                 labels: Sequence[Hashable] | None = None, source: str = "", meta: dict[str, Any] | None = None) -> None:
        embeddings = torch.as_tensor(embeddings).detach().float().cpu()
        if embeddings.dim() != 2 or len(embeddings) == 0:
            raise ValueError(f"an index needs embeddings [n, d] with n >= 1; got shape {tuple(embeddings.shape)} "
                             "(an empty gallery)")
        if len(items) != len(embeddings) or (labels is not None and len(labels) != len(embeddings)):
            raise ValueError(f"got {len(embeddings)} embeddings, {len(items)} item names and "
                             f"{'no' if labels is None else len(labels)} labels")
        self.embedder = embedder
        self.embeddings = embeddings.contiguous()
        self.items = list(items)
        self.labels = None if labels is None else list(labels)
        self.source = source
        self.meta = dict(meta or {})
        self.meta.setdefault("weights_sha256", embedder.weights_sha256)
        self.meta.setdefault("checkpoint", None if embedder.checkpoint is None else str(embedder.checkpoint))
        self.meta.setdefault("checkpoint_sha256", embedder.checkpoint_sha256)
        self.ann_settings: AnnSettings | None = None
        self.ann_recall: dict[str, Any] | None = None
        self.ann_build_seconds: float | None = None
        self._faiss: Any = None
        self._on_device: Tensor | None = None

    # ---- size and metric ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def distance(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The model's scoring distance (the one its nearest-prototype logits use)."""
        return self.embedder.distance

    def __repr__(self) -> str:
        kind = "exact" if self.ann_settings is None else f"faiss {self.ann_settings.kind}"
        return f"Index({len(self)} items, dim {self.dim}, {kind}, labels={'yes' if self.labels else 'no'})"

    def _gallery(self) -> Tensor:
        device = self.embedder.device
        if device.type == "cpu":
            return self.embeddings
        if self._on_device is None:
            self._on_device = self.embeddings.to(device)
        return self._on_device

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > len(self):
            raise ValueError(f"k={k} exceeds the {len(self)} item(s) of the gallery; ask for k <= {len(self)}")
        return k

    # ---- approximate structure ---------------------------------------------------------------

    def build_ann(self, kind: str = "ivf", *, recall_sample: int = RECALL_SAMPLE, recall_k: int = RECALL_K,
                  **settings: Any) -> dict[str, Any] | None:
        """Add a faiss IVF-Flat or HNSW-Flat structure (settings: see `AnnSettings`) and measure its recall@k
        against exact search on `recall_sample` seeded gallery items used as queries (each left out of its own
        results). Returns that measurement (None when `recall_sample` is 0: then recall is not claimed)."""
        ann = AnnSettings(kind, **settings)
        space = metric_space(self.distance)
        if space is None:
            raise ValueError(f"faiss cannot index this model's distance ({self.distance!r}: not a Euclidean, "
                             "Mahalanobis or cosine form); use exact search (ann=None)")
        started = time.perf_counter()
        with torch.no_grad():
            vectors = space.transform(self._gallery()).float().cpu().numpy()
        self._faiss = build_faiss(np.ascontiguousarray(vectors), space.kind, ann)
        self.ann_build_seconds = time.perf_counter() - started
        self.ann_settings = ann
        self.ann_recall = None
        if recall_sample:
            self.ann_recall = self.measure_recall(recall_sample, recall_k, seed=ann.seed)
        return self.ann_recall

    def measure_recall(self, sample: int = RECALL_SAMPLE, k: int = RECALL_K, seed: int = 0,
                       queries: Any = None, *, batch_size: int = 256) -> dict[str, Any]:
        """Recall@k of the approximate structure against exact search: on `queries` if given (query embeddings
        [q, d], or query images as `search` takes them: paths, PIL images, a folder or a preprocessed tensor),
        else on `sample` seeded gallery items, each left out of its own results."""
        if self._faiss is None:
            raise ValueError("this index has no approximate structure; exact search has recall 1 by definition")
        if queries is not None and not self.is_embeddings(queries):
            queries = embed_stream(self.embedder, queries, batch_size=batch_size, progress=False, what="queries")[0]
        if queries is None:
            count = min(sample, len(self))
            rows = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False)))
            k = min(k, len(self) - 1)
            queries, exclude = self.embeddings[rows], rows
        else:
            queries, exclude = torch.as_tensor(queries).float(), None
            k = min(k, len(self))
        if k < 1:
            raise ValueError("measuring recall needs a gallery of at least 2 items")
        _, exact = exact_search(self.distance, queries, self._gallery(), k, exclude)
        _, approximate = self._ann_search(queries, k, exclude)
        recall = recall_against_exact(approximate, exact)
        return {"recall": recall, "k": k, "queries": int(len(queries)),
                "of": "gallery items (each left out of its own results)" if exclude is not None else "given queries",
                "settings": self.ann_settings.to_dict()}

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the recall/speed setting of the approximate structure (then `measure_recall` again)."""
        if self._faiss is None or self.ann_settings is None:
            raise ValueError("this index has no approximate structure to tune")
        backend = ann_backend(self.ann_settings.kind)
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is None:
                continue
            if name != backend.search_parameter:
                owner = next(ANN_BACKENDS[kind] for kind in ANN_BACKENDS if ANN_BACKENDS[kind].search_parameter == name)
                raise ValueError(f"{name} applies to an {owner.title} index; an {backend.title} index takes "
                                 f"{backend.search_parameter}")
            setattr(self.ann_settings, name, int(value))
            backend.set_search_parameter(self._faiss, int(value))
        self.ann_settings.__post_init__()

    def _ann_search(self, queries: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        space = metric_space(self.distance)
        extra = 1 if exclude is not None else 0
        ann_backend(self.ann_settings.kind).before_search(self._faiss, self.ann_settings, k + extra)
        with torch.no_grad():
            vectors = np.ascontiguousarray(space.transform(queries.to(self.embedder.device)).float().cpu().numpy())
        raw, found = self._faiss.search(vectors, k + extra)
        raw, found = torch.from_numpy(raw).float(), torch.from_numpy(found).long()
        if exclude is not None:  # drop each query's own row (or the last column if it was not found)
            own = found == exclude[:, None]
            drop = torch.where(own.any(1), own.float().argmax(1), torch.full((len(found),), k))
            keep = torch.ones_like(found, dtype=torch.bool)
            keep[torch.arange(len(found)), drop] = False
            raw, found = raw[keep].view(len(found), k), found[keep].view(len(found), k)
        missing = (found < 0).any(dim=1)
        distances = space.to_distance(raw)
        if bool(missing.any()):
            # A query whose probed cells hold fewer than k items: answer it exactly rather than short.
            rows = torch.nonzero(missing).flatten()
            exact_d, exact_i = exact_search(self.distance, queries[rows], self._gallery(), k,
                                            None if exclude is None else exclude[rows])
            distances[rows], found[rows] = exact_d, exact_i
        return distances, found

    # ---- searching ---------------------------------------------------------------------------

    def is_embeddings(self, queries: Any) -> bool:
        """Whether `queries` are query embeddings of this index ([q, d] floats) rather than images."""
        return (isinstance(queries, (Tensor, np.ndarray)) and queries.ndim == 2 and queries.shape[1] == self.dim
                and (queries.dtype.is_floating_point if isinstance(queries, Tensor)
                     else np.issubdtype(queries.dtype, np.floating)))

    def search_embeddings(self, embeddings: Tensor, k: int = 5, *, exact: bool = False,
                          names: Sequence[str] | None = None) -> SearchResult:
        """The k nearest gallery items of query embeddings [q, d], as `search` gives them (`indices`,
        `distances`, `items`, `labels`; the queries named `names`, default `#row`); approximate when the
        index has a faiss structure, unless `exact`."""
        k = self._check_k(k)
        embeddings = torch.as_tensor(embeddings).float()
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"query embeddings must be [q, {self.dim}], got {tuple(embeddings.shape)}")
        if len(embeddings) == 0:
            raise ValueError("no queries given")
        if names is not None and len(names) != len(embeddings):
            raise ValueError(f"{len(names)} query names for {len(embeddings)} query embeddings")
        if self._faiss is not None and not exact:
            distances, indices = self._ann_search(embeddings, k)
        else:
            distances, indices = exact_search(self.distance, embeddings, self._gallery(), k)
        items = [[self.items[i] for i in row] for row in indices.tolist()]
        labels = None if self.labels is None else [[self.labels[i] for i in row] for row in indices.tolist()]
        names = [f"#{row}" for row in range(len(embeddings))] if names is None else list(names)
        return SearchResult(indices, distances, items, labels, names)

    def search(self, queries: Any, k: int = 5, *, exact: bool = False, batch_size: int = 256,
               progress: bool = False) -> SearchResult:
        """The k nearest gallery items of each query image (paths, PIL images, a folder or a preprocessed tensor),
        nearest first, with distances in the model's metric."""
        k = self._check_k(k)
        embeddings, names, _, _ = embed_stream(self.embedder, queries, batch_size=batch_size, progress=progress,
                                               what="queries")
        return self.search_embeddings(embeddings, k, exact=exact, names=names)

    def anomaly_scores(self, queries: Any, *, exact: bool = True, batch_size: int = 256) -> Tensor:
        """Distance of each query to its nearest gallery item (larger: more unlike anything in the gallery)."""
        embeddings, _, _, _ = embed_stream(self.embedder, queries, batch_size=batch_size, progress=False,
                                           what="queries")
        return self.search_embeddings(embeddings, 1, exact=exact).distances[:, 0]

    # ---- saving ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The index as tensors and plain values (what `save` writes; loadable with weights_only=True)."""
        labels = self.labels
        if labels is not None:
            bad = next((label for label in labels if not isinstance(label, (str, int)) or isinstance(label, bool)), None)
            if bad is not None:
                raise ValueError(f"cannot save label {bad!r} ({type(bad).__name__}): a saved index holds str or int "
                                 "labels only (weights-only format)")
        ann = None
        if self._faiss is not None:
            faiss = import_faiss()
            ann = {"settings": self.ann_settings.to_dict(), "recall": self.ann_recall,
                   "build_seconds": self.ann_build_seconds,
                   "data": torch.from_numpy(faiss.serialize_index(self._faiss).copy())}
        return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "embeddings": self.embeddings, "items": self.items,
                "labels": labels, "source": self.source, "meta": self.meta, "ann": ann}

    def save(self, path: str | Path) -> Path:
        """Write the index atomically (torch.save of tensors and plain dicts)."""
        state = self.state()
        return atomic_write(path, lambda file: torch.save(state, file))

    @staticmethod
    def read_state(path: str | Path) -> dict[str, Any]:
        """The saved state of an index file (weights-only unpickling), checked to be one; `state["meta"]` names
        the checkpoint that built it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated or foreign file
            raise ValueError(f"index {path} is corrupt or not a fewshot index: {load_error_reason(error)}") from None
        if not isinstance(state, dict) or state.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path} is not a fewshot index (written by Index.save)")
        if state.get("version") != INDEX_VERSION:
            raise ValueError(f"index {path} has format version {state.get('version')!r}; this fewshot reads "
                             f"version {INDEX_VERSION}: rebuild it")
        return state

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder, state: dict[str, Any] | None = None) -> Index:
        """Read an index written by `save` for `embedder` (a loaded model; or use its already read `state`),
        refusing one built by another checkpoint: its embeddings would not be comparable with this model's."""
        state = cls.read_state(path) if state is None else state
        meta = state["meta"]
        if meta.get("weights_sha256") != embedder.weights_sha256:
            raise ValueError(
                f"index {path} was built by another checkpoint ({meta.get('checkpoint')}, sha256 "
                f"{_short(meta.get('checkpoint_sha256'))}, weights {_short(meta.get('weights_sha256'))}); this model is "
                f"{embedder.checkpoint} (sha256 {_short(embedder.checkpoint_sha256)}, weights "
                f"{_short(embedder.weights_sha256)}). Embeddings of different weights are not comparable: rebuild "
                "the index with this model, or load the checkpoint that built it")
        index = cls(embedder, state["embeddings"], state["items"], state["labels"], state.get("source", ""), meta)
        ann = state.get("ann")
        if ann is not None:
            index.ann_settings = AnnSettings(**ann["settings"])
            index.ann_recall, index.ann_build_seconds = ann.get("recall"), ann.get("build_seconds")
            if faiss_available():
                index._faiss = import_faiss().deserialize_index(ann["data"].numpy())
            else:
                warnings.warn(f"index {path} holds a faiss {ann['settings']['kind']} structure but faiss is not "
                              "installed (pip install 'fewshot[search]'); searching exactly instead", stacklevel=2)
                index.ann_settings = None
        return index


def build_index(embedder: Embedder, images: Any, labels: Sequence[Hashable] | None = None, *,
                batch_size: int = 256, progress: bool = True, skip_unreadable: bool = False, ann: str | None = None,
                **ann_settings: Any) -> Index:
    """Embed a gallery (streamed) and index it; `ann` "ivf" / "hnsw" adds a faiss structure (see `Index.build_ann`).
    What would refuse the structure (faiss missing, bad settings, a distance faiss cannot index) is checked
    before the gallery is embedded, so it costs nothing."""
    if ann is not None:
        import_faiss()
        AnnSettings(ann, **ann_settings)
        if metric_space(embedder.distance) is None:
            raise ValueError(f"faiss cannot index this model's distance ({embedder.distance!r}: not a Euclidean, "
                             "Mahalanobis or cosine form); use exact search (ann=None)")
    embeddings, items, labels, source = embed_stream(embedder, images, labels, batch_size=batch_size,
                                                     progress=progress, skip_unreadable=skip_unreadable,
                                                     what="indexing")
    index = Index(embedder, embeddings, items, labels, source)
    if ann is not None:
        if progress:  # faiss trains and fills its structure without a progress bar of its own
            print(f"building the faiss {ann} structure over {len(items)} images", file=sys.stderr)
        index.build_ann(ann, **ann_settings)
    elif ann_settings:
        raise ValueError(f"{', '.join(sorted(ann_settings))} apply to an approximate index; pass ann='ivf' or 'hnsw'")
    return index
