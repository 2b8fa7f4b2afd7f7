"""Search a gallery in a trained model's own metric: `Index` (exact torch search, chunked; faiss IVF or HNSW
when faiss is installed), saved weights-only and tied to the weights that built it.

    from fewshot.api import load
    model = load("runs/proto/best.pt")
    index = model.index("gallery/")                 # streamed: a batch of images in memory at a time
    result = index.search(["query.png"], k=5)       # neighbours and distances in the model's metric
    index.save("gallery.index")
    index = model.load_index("gallery.index")       # refused if another checkpoint built it

The command line is `python -m fewshot.search build|query|verify|calibrate` (`fewshot.cli.search`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from fewshot.data.folder import IMAGE_EXTENSIONS, _is_os_artifact
from fewshot.data.store import atomic_write, load_error_reason

ImageLike = Union[str, Path, Image.Image]
INDEX_FORMAT = "fewshot-index"
INDEX_VERSION = 1
ANN_KINDS = ("ivf", "hnsw")
#: Queries per exact-search block, and the float32 elements one block of distances may hold (64 MB).
QUERY_CHUNK = 1024
BLOCK_ELEMENTS = 1 << 24
#: Gallery items sampled as queries to measure an approximate index's recall against exact search.
RECALL_SAMPLE = 1000
RECALL_K = 10


# --------------------------------------------------------------------------------------------
# The model's metric as coordinates that faiss and k-means understand
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpace:
    """A distance written as `to_distance(raw(transform(x), transform(y)))`, where `raw` is the squared
    Euclidean distance ("l2") or the inner product ("ip") of the transformed vectors: what faiss indexes
    and k-means clusters. `to_distance` is increasing for "l2" and decreasing for "ip"."""

    transform: Callable[[Tensor], Tensor]
    kind: str
    to_distance: Callable[[Tensor], Tensor]


def metric_space(distance: Callable[[Tensor, Tensor], Tensor]) -> MetricSpace | None:
    """The `MetricSpace` of one of fewshot's distances (squared Euclidean, Mahalanobis, cosine, and the
    learners' wrappers of them: square root, normalised-and-scaled, scaled cosine); None for any other
    callable, which only exact search (calling it directly) supports."""
    from fewshot.distances import Cosine, Euclidean, Mahalanobis, SquaredEuclidean
    from fewshot.learners.base import SquareRoot
    from fewshot.learners.proxies import CosineScore
    from fewshot.learners.proxy_nca import NormalizedScaled

    def identity(x: Tensor) -> Tensor:
        return x

    if isinstance(distance, SquaredEuclidean):
        return MetricSpace(identity, "l2", identity)
    if isinstance(distance, Mahalanobis):
        return MetricSpace(distance.transform, "l2", identity)
    if isinstance(distance, Euclidean):
        return MetricSpace(identity, "l2", lambda raw: raw.clamp_min(distance.eps).sqrt())
    if isinstance(distance, (Cosine, CosineScore)):
        scale = float(torch.as_tensor(distance.scale).detach())
        if scale <= 0:  # a non-positive scale would reverse the order: not a distance
            return None
        return MetricSpace(lambda x: F.normalize(x, dim=1), "ip", lambda raw: -scale * raw)
    if isinstance(distance, SquareRoot):
        inner = metric_space(distance.squared)
        if inner is None or inner.kind != "l2":
            return None
        return MetricSpace(inner.transform, "l2", lambda raw: inner.to_distance(raw).clamp_min(distance.eps).sqrt())
    if isinstance(distance, NormalizedScaled):
        inner = metric_space(distance.distance)
        if inner is None or distance.scale <= 0:
            return None
        scale = float(distance.scale)
        return MetricSpace(lambda x: inner.transform(F.normalize(x, dim=1)), inner.kind,
                           lambda raw: scale * inner.to_distance(raw))
    return None


# --------------------------------------------------------------------------------------------
# Exact search
# --------------------------------------------------------------------------------------------


def describe_distance(distance: Callable[[Tensor, Tensor], Tensor]) -> str:
    """A distance in words, for captions: "squared Euclidean", "sqrt of diagonal Mahalanobis", ..."""
    from fewshot.distances import Cosine, Euclidean, Mahalanobis, SquaredEuclidean
    from fewshot.learners.base import SquareRoot
    from fewshot.learners.proxies import CosineScore
    from fewshot.learners.proxy_nca import NormalizedScaled

    if isinstance(distance, SquaredEuclidean):
        return "squared Euclidean"
    if isinstance(distance, Euclidean):
        return "Euclidean"
    if isinstance(distance, Mahalanobis):
        return f"{'diagonal ' if distance.diagonal else 'low-rank ' if distance.rank else ''}Mahalanobis (squared)"
    if isinstance(distance, (Cosine, CosineScore)):
        return f"-{float(torch.as_tensor(distance.scale).detach()):.3g} x cosine"
    if isinstance(distance, SquareRoot):
        return f"sqrt of {describe_distance(distance.squared)}"
    if isinstance(distance, NormalizedScaled):
        return f"{distance.scale:g} x {describe_distance(distance.distance)} of unit vectors"
    return type(distance).__name__


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


# --------------------------------------------------------------------------------------------
# faiss, optional
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Streaming images in batches
# --------------------------------------------------------------------------------------------


def folder_images(root: str | Path) -> tuple[list[Path], list[str] | None]:
    """The image files under `root` (recursively, sorted by relative path) and their labels: the class
    folder (path relative to `root`) when images sit in sub-folders, None when all sit in `root` itself.
    OS artifacts are skipped; other non-image files are skipped with a warning naming a few."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    images, skipped = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _is_os_artifact(d))
        for name in sorted(files):
            if _is_os_artifact(name):
                continue
            path = Path(folder) / name
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(path)
    images.sort(key=lambda path: path.relative_to(root).as_posix())
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:3])
        warnings.warn(f"skipped {len(skipped)} file(s) under {root} that are not images (by extension: "
                      f"{', '.join(IMAGE_EXTENSIONS)}): {shown}{', ...' if len(skipped) > 3 else ''}", stacklevel=3)
    if not images:
        raise ValueError(f"no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case): the gallery "
                         "would be empty")
    parents = [path.parent.relative_to(root).as_posix() for path in images]
    if all(parent == "." for parent in parents):
        return images, None
    if any(parent == "." for parent in parents):
        loose = next(path for path, parent in zip(images, parents) if parent == ".")
        raise ValueError(f"{root} mixes images in class folders with images directly in it (e.g. {loose}); put every "
                         "image in a class folder, or none")
    return images, parents


def _describe_item(image: Any, position: int) -> str:
    if isinstance(image, (str, Path)):
        return str(Path(image).expanduser().resolve())
    return f"#{position}"


class ImageStream:
    """Images (a folder, a list or any iterable of paths / PIL images, or a preprocessed tensor) turned into
    batches of model input, a batch in memory at a time. Unreadable files are collected, not fatal on
    the first: `failures` names them all after the stream is consumed."""

    def __init__(self, classifier: "FewShotClassifier", images: Any, labels: Sequence[Hashable] | None,
                 batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.classifier, self.batch_size = classifier, batch_size
        self.failures: list[tuple[str, str]] = []
        self.source = "images"
        if isinstance(images, (str, Path)) and Path(images).expanduser().is_dir():
            if labels is not None:
                raise ValueError(f"labels come from the class folders of {images}; pass labels=None for a folder "
                                 "(or pass a list of image paths with their labels)")
            self.source = str(Path(images).expanduser().resolve())
            images, labels = folder_images(images)
        elif isinstance(images, (str, Path)) and not Path(images).expanduser().exists():
            raise FileNotFoundError(f"{images} does not exist (expected a folder of images, or pass a list of images)")
        elif isinstance(images, (str, Path, Image.Image)):
            raise TypeError(f"pass a folder or a list of images, not a single image ({images!r} is not a folder)")
        elif not isinstance(images, (torch.Tensor, Iterable)):
            raise TypeError(f"images must be a folder, a list of image paths / PIL images, or a tensor; got "
                            f"{type(images).__name__}")
        self.images = images
        self.total = len(images) if hasattr(images, "__len__") else None
        if labels is not None:
            labels = list(labels)
            if self.total is not None and len(labels) != self.total:
                raise ValueError(f"got {self.total} images but {len(labels)} labels")
        self.labels = labels

    def batches(self) -> Iterator[tuple[Tensor, list[str], list[Hashable] | None]]:
        """(float input [b, C, H, W], item names, labels or None) per batch of readable images."""
        if isinstance(self.images, torch.Tensor):
            for start in range(0, len(self.images), self.batch_size):
                x = self.classifier.images_to_tensor(self.images[start:start + self.batch_size])
                names = [f"#{i}" for i in range(start, start + len(x))]
                yield x, names, None if self.labels is None else self.labels[start:start + len(x)]
            return
        pending: list[tuple[Tensor, str, Hashable]] = []
        position = -1
        for position, image in enumerate(self.images):
            if not isinstance(image, (str, Path, Image.Image)):
                raise TypeError(f"image {position} is a {type(image).__name__}; a list holds image paths or PIL "
                                "images (pass preprocessed pixels as one tensor)")
            if self.labels is not None and position >= len(self.labels):
                raise ValueError(f"got more images than the {len(self.labels)} labels")
            name = _describe_item(image, position)
            label = None if self.labels is None else self.labels[position]
            try:
                pixels = self.classifier._preprocess(image)
            except Exception as error:  # a damaged file can make PIL raise anything: name the file instead
                self.failures.append((name, str(error)))
                continue
            pending.append((pixels, name, label))
            if len(pending) == self.batch_size:
                yield self._batch(pending)
                pending = []
        if self.labels is not None and self.total is None and position + 1 != len(self.labels):
            raise ValueError(f"got {position + 1} images but {len(self.labels)} labels")
        if pending:
            yield self._batch(pending)

    def _batch(self, pending: list[tuple[Tensor, str, Hashable]]) -> tuple[Tensor, list[str], list[Hashable] | None]:
        from fewshot.data.store import to_float

        x = to_float(torch.stack([pixels for pixels, _, _ in pending]))
        return x, [name for _, name, _ in pending], None if self.labels is None else [label for _, _, label in pending]

    def failure_message(self) -> str:
        shown = "; ".join(f"{name}: {reason}" for name, reason in self.failures[:10])
        more = f"; and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        return f"{len(self.failures)} image(s) could not be read: {shown}{more}"


@torch.no_grad()
def embed_stream(classifier: "FewShotClassifier", images: Any, labels: Sequence[Hashable] | None = None, *,
                 batch_size: int = 256, progress: bool = True, skip_unreadable: bool | None = None,
                 what: str = "embedding") -> tuple[Tensor, list[str], list[Hashable] | None, str]:
    """Embeddings [n, d] (CPU float32), item names, labels and a description of the source, streamed: one
    batch of images in memory at a time. Unreadable files are named together at the end (an error, or a
    warning with `skip_unreadable`; None: an error that does not offer skipping, for callers without that option)."""
    stream = ImageStream(classifier, images, labels, batch_size)
    chunks: list[Tensor] = []
    names: list[str] = []
    kept_labels: list[Hashable] = []
    counted_failures = 0
    with tqdm(total=stream.total, desc=what, unit="img", disable=not progress, leave=False) as bar:
        for x, batch_names, batch_labels in stream.batches():
            chunks.append(classifier.model.embed(x.to(classifier.device)).float().cpu())
            names.extend(batch_names)
            if batch_labels is not None:
                kept_labels.extend(batch_labels)
            bar.update(len(x) + len(stream.failures) - counted_failures)  # unreadable files count as done
            counted_failures = len(stream.failures)
        bar.update(len(stream.failures) - counted_failures)
    if stream.failures:
        if not skip_unreadable:
            hint = " (pass skip_unreadable=True to leave them out)" if skip_unreadable is False else ""
            raise ValueError(stream.failure_message() + hint)
        warnings.warn(f"left out {stream.failure_message()}", stacklevel=3)
    if not chunks:
        empty = ": the gallery would be empty" if what == "indexing" else ""
        raise ValueError(f"no images given (from {stream.source}){empty}")
    return torch.cat(chunks), names, (kept_labels if stream.labels is not None else None), stream.source


# --------------------------------------------------------------------------------------------
# Identity of the weights an index was built with
# --------------------------------------------------------------------------------------------


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's architecture and weights: equal exactly when two models embed alike. Unlike a
    checkpoint file's hash, it stays the same when metadata is added to the file (a stored threshold)."""
    digest = hashlib.sha256(json.dumps(getattr(model, "spec").to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _short(sha: str | None) -> str:
    return "unknown" if not sha else sha[:12]


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------


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

    def __init__(self, classifier: "FewShotClassifier", embeddings: Tensor, items: Sequence[str],
                 labels: Sequence[Hashable] | None = None, source: str = "", meta: dict[str, Any] | None = None) -> None:
        embeddings = torch.as_tensor(embeddings).detach().float().cpu()
        if embeddings.dim() != 2 or len(embeddings) == 0:
            raise ValueError(f"an index needs embeddings [n, d] with n >= 1; got shape {tuple(embeddings.shape)} "
                             "(an empty gallery)")
        if len(items) != len(embeddings) or (labels is not None and len(labels) != len(embeddings)):
            raise ValueError(f"got {len(embeddings)} embeddings, {len(items)} item names and "
                             f"{'no' if labels is None else len(labels)} labels")
        self.classifier = classifier
        self.embeddings = embeddings.contiguous()
        self.items = list(items)
        self.labels = None if labels is None else list(labels)
        self.source = source
        self.meta = dict(meta or {})
        self.meta.setdefault("weights_sha256", classifier.weights_sha256)
        self.meta.setdefault("checkpoint", None if classifier.checkpoint is None else str(classifier.checkpoint))
        self.meta.setdefault("checkpoint_sha256", classifier.checkpoint_sha256)
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
        return self.classifier.model.learner.scoring_distance

    def __repr__(self) -> str:
        kind = "exact" if self.ann_settings is None else f"faiss {self.ann_settings.kind}"
        return f"Index({len(self)} items, dim {self.dim}, {kind}, labels={'yes' if self.labels else 'no'})"

    def _gallery(self) -> Tensor:
        device = self.classifier.device
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
                       queries: Tensor | None = None) -> dict[str, Any]:
        """Recall@k of the approximate structure against exact search: on `queries` (embeddings) if given,
        else on `sample` seeded gallery items, each left out of its own results."""
        if self._faiss is None:
            raise ValueError("this index has no approximate structure; exact search has recall 1 by definition")
        if queries is None:
            count = min(sample, len(self))
            rows = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False)))
            k = min(k, len(self) - 1)
            queries, exclude = self.embeddings[rows], rows
        else:
            exclude = None
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
        if nprobe is not None:
            if self.ann_settings.kind != "ivf":
                raise ValueError("nprobe applies to an IVF index; an HNSW index takes ef_search")
            self.ann_settings.nprobe = int(nprobe)
            self._faiss.nprobe = min(int(nprobe), self._faiss.nlist)
        if ef_search is not None:
            if self.ann_settings.kind != "hnsw":
                raise ValueError("ef_search applies to an HNSW index; an IVF index takes nprobe")
            self.ann_settings.ef_search = int(ef_search)
            self._faiss.hnsw.efSearch = int(ef_search)
        self.ann_settings.__post_init__()

    def _ann_search(self, queries: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        space = metric_space(self.distance)
        extra = 1 if exclude is not None else 0
        if self.ann_settings.kind == "hnsw":
            self._faiss.hnsw.efSearch = max(self.ann_settings.ef_search, k + extra)
        with torch.no_grad():
            vectors = np.ascontiguousarray(space.transform(queries.to(self.classifier.device)).float().cpu().numpy())
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

    def search_embeddings(self, embeddings: Tensor, k: int = 5, *, exact: bool = False) -> tuple[Tensor, Tensor]:
        """(distances, indices) [q, k] of the nearest gallery items to query embeddings [q, d]; approximate when
        the index has a faiss structure, unless `exact`."""
        k = self._check_k(k)
        embeddings = torch.as_tensor(embeddings).float()
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"query embeddings must be [q, {self.dim}], got {tuple(embeddings.shape)}")
        if len(embeddings) == 0:
            raise ValueError("no queries given")
        if self._faiss is not None and not exact:
            return self._ann_search(embeddings, k)
        return exact_search(self.distance, embeddings, self._gallery(), k)

    def search(self, queries: Any, k: int = 5, *, exact: bool = False, batch_size: int = 256,
               progress: bool = False) -> SearchResult:
        """The k nearest gallery items of each query image (paths, PIL images, a folder or a preprocessed tensor),
        nearest first, with distances in the model's metric."""
        k = self._check_k(k)
        embeddings, names, _, _ = embed_stream(self.classifier, queries, batch_size=batch_size, progress=progress,
                                               what="queries")
        distances, indices = self.search_embeddings(embeddings, k, exact=exact)
        items = [[self.items[i] for i in row] for row in indices.tolist()]
        labels = None if self.labels is None else [[self.labels[i] for i in row] for row in indices.tolist()]
        return SearchResult(indices, distances, items, labels, names)

    def anomaly_scores(self, queries: Any, *, exact: bool = True, batch_size: int = 256) -> Tensor:
        """Distance of each query to its nearest gallery item (larger: more unlike anything in the gallery)."""
        embeddings, _, _, _ = embed_stream(self.classifier, queries, batch_size=batch_size, progress=False,
                                           what="queries")
        return self.search_embeddings(embeddings, 1, exact=exact)[0][:, 0]

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
    def load(cls, path: str | Path, classifier: "FewShotClassifier", state: dict[str, Any] | None = None) -> "Index":
        """Read an index written by `save` for `classifier` (or use its already read `state`), refusing one built
        by another checkpoint: its embeddings would not be comparable with this model's."""
        state = cls.read_state(path) if state is None else state
        meta = state["meta"]
        if meta.get("weights_sha256") != classifier.weights_sha256:
            raise ValueError(
                f"index {path} was built by another checkpoint ({meta.get('checkpoint')}, sha256 "
                f"{_short(meta.get('checkpoint_sha256'))}, weights {_short(meta.get('weights_sha256'))}); this model is "
                f"{classifier.checkpoint} (sha256 {_short(classifier.checkpoint_sha256)}, weights "
                f"{_short(classifier.weights_sha256)}). Embeddings of different weights are not comparable: rebuild "
                "the index with this model, or load the checkpoint that built it")
        index = cls(classifier, state["embeddings"], state["items"], state["labels"], state.get("source", ""), meta)
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


def build_index(classifier: "FewShotClassifier", images: Any, labels: Sequence[Hashable] | None = None, *,
                batch_size: int = 256, progress: bool = True, skip_unreadable: bool = False, ann: str | None = None,
                **ann_settings: Any) -> Index:
    """Embed a gallery (streamed) and index it; `ann` "ivf" / "hnsw" adds a faiss structure (see `Index.build_ann`)."""
    embeddings, items, labels, source = embed_stream(classifier, images, labels, batch_size=batch_size,
                                                     progress=progress, skip_unreadable=skip_unreadable,
                                                     what="indexing")
    index = Index(classifier, embeddings, items, labels, source)
    if ann is not None:
        index.build_ann(ann, **ann_settings)
    elif ann_settings:
        raise ValueError(f"{', '.join(sorted(ann_settings))} apply to an approximate index; pass ann='ivf' or 'hnsw'")
    return index


# --------------------------------------------------------------------------------------------
# Contact sheet: each query beside its neighbours
# --------------------------------------------------------------------------------------------

#: Queries drawn on one contact sheet (a sheet of more is too tall to read).
SHEET_ROWS = 24


def _thumbnail(item: str) -> np.ndarray | None:
    path = Path(item)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception:  # a file that changed or went bad since indexing: drawn as missing, not fatal
        return None


def write_contact_sheet(result: SearchResult, path: str | Path, query_labels: Sequence[Hashable] | None = None,
                        title: str | None = None) -> Path:
    """A PNG with one row per query (at most `SHEET_ROWS`): the query, then its neighbours nearest first, each
    captioned with its rank, distance and label. With `query_labels`, a neighbour of the query's label is framed
    green and another red. Items that are not readable files (a tensor gallery) are drawn as grey squares."""
    from matplotlib.figure import Figure  # no pyplot: a figure of its own, whatever backend the caller uses

    rows = min(len(result), SHEET_ROWS)
    k = result.indices.shape[1]
    fig = Figure(figsize=(1.7 * (k + 1), 2.0 * rows + (0.4 if title else 0)))
    axes = fig.subplots(rows, k + 1, squeeze=False)

    def show(ax: Any, item: str, caption: str, colour: str | None) -> None:
        picture = _thumbnail(item)
        if picture is None:
            ax.imshow(np.full((8, 8, 3), 200, np.uint8))
            ax.text(0.5, 0.5, "no file", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        else:
            ax.imshow(picture)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(colour is not None)
            if colour is not None:
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
        ax.set_title(caption, fontsize=8)

    def short(text: Any, width: int = 26) -> str:
        text = str(text)
        return text if len(text) <= width else "…" + text[-(width - 1):]

    for row in range(rows):
        query_label = None if query_labels is None else query_labels[row]
        caption = f"query {short(Path(result.queries[row]).name, 16)}"
        if query_label is not None:
            caption += f"\n{short(query_label)}"
        show(axes[row][0], result.queries[row], caption, "black")
        for rank, (item, label, distance) in enumerate(result.neighbours(row), start=1):
            colour = None if query_label is None or label is None else ("tab:green" if label == query_label else "tab:red")
            shown = f"{distance:.3f}" if abs(distance) < 1000 else f"{distance:.3g}"
            caption = f"#{rank}  d={shown}\n{short(label if label is not None else Path(item).name)}"
            show(axes[row][rank], item, caption, colour)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


if __name__ == "__main__":
    # `python -m fewshot.search ...` hands over to the command line module; importing it here would make
    # this library module and its CLI import each other.
    import runpy

    runpy.run_module("fewshot.cli.search", run_name="__main__", alter_sys=True)
