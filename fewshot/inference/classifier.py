"""Use a trained model from Python: load a checkpoint, embed raw images, classify queries against a support set,
and use the embedding: search a gallery, verify pairs, identify with "unknown", cluster, score anomalies.

    from fewshot.api import load
    model = load("runs/proto/best.pt")               # a TrainedModel
    labels = model.classify(support=["a1.png", "b1.png"], support_labels=["a", "b"], query=["q.png"])
    index = model.index("gallery/")                  # fewshot.inference.index.Index; index.search(["q.png"], k=5)
    decision = model.verify("a.png", "b.png")        # score, same / different at the calibrated threshold

Images go through exactly the preprocessing used to build the training data: the checkpoint's dataset
declares it (for Omniglot, `fewshot.data.omniglot.preprocess_image`: grayscale, antialiased resize, ink = 1;
for a user's folder, grayscale or RGB as trained, antialiased resize). `TrainedModel` is the one place that
joins the inference wing: streaming, indexing and clustering only see its `Embedder` interface
(`fewshot.inference.inputs`), and calibration works on its bare `FewShotModel`.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.data.datasets import DatasetSplits
from fewshot.data.splits import ClassSplit
from fewshot.evaluation.calibration import (
    CHECKPOINT_KEY,
    DEFAULT_FAR,
    check_calibration,
    check_far,
    operating_point,
    validation_split,
)
from fewshot.evaluation.calibration import (
    calibrate as calibrate_model,
)
from fewshot.evaluation.base_mean import BaseClassMean
from fewshot.evaluation.checkpoints import checkpoint_base_split
from fewshot.evaluation.heads import Head, HeadContext, build_head, episode_generator, episode_logits
from fewshot.files import absolute_path
from fewshot.inference.clustering import Clustering, cluster_embeddings
from fewshot.inference.exact import exact_search
from fewshot.inference.images import embed_stream
from fewshot.inference.index import Index, build_index
from fewshot.inference.inputs import DistanceFn, ImageLike, ModelInput, is_single_image
from fewshot.learners.base import nearest_prototype, prototypes
from fewshot.model.checkpoint import (
    file_sha256,
    model_from_checkpoint,
    weights_fingerprint,
)
from fewshot.model.network import FewShotModel
from fewshot.runtime import resolve_device

#: Checkpoint entries that are weights or optimiser state, not metadata (left out of `state_info`).
_WEIGHT_KEYS = ("model", "optimizer", "scheduler")


def _is_folder(images: object) -> bool:
    """Whether `images` names a folder (which the methods taking images stream), not a list, tensor or one image."""
    return isinstance(images, (str, Path)) and Path(images).expanduser().is_dir()


@dataclass
class Verification:
    """Same / different decisions: `score` (-distance), `distance` and `same` (score >= threshold) are a float,
    a float and a bool for one pair, tensors [n] for n pairs. `far` is the false accept rate the threshold was
    chosen for on validation classes, `far_measured` and `tar` its rates there."""

    score: Any
    distance: Any
    same: Any
    threshold: float
    far: float
    far_measured: float
    tar: float


@dataclass
class Identification:
    """Open-set answers: per query the label (`unknown` when its nearest class is beyond the threshold), the
    nearest class whatever its distance, and that distance [q]; `accepted` [q] says which were not unknown."""

    labels: list[Hashable]
    nearest: list[Hashable]
    distances: torch.Tensor
    accepted: torch.Tensor
    max_distance: float
    far: float | None
    classes: list[Hashable]


class TrainedModel:
    """A trained `FewShotModel` with its preprocessing and device: embed raw images, classify queries by nearest
    prototype, and use the embedding (search, verify, identify, cluster, score anomalies). It implements
    `fewshot.inference.inputs.Embedder`. (Called `FewShotClassifier` before; `fewshot.api` keeps that name.)"""

    def __init__(self, model: FewShotModel, dataset: str, device: str | torch.device = "cpu", *,
                 checkpoint: str | Path | None = None, state: dict[str, Any] | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.dataset = dataset
        #: How raw images become this model's input (the dataset's own preprocessing, and tensor checks).
        self.input = ModelInput.for_dataset(dataset, model.spec.image_size, model.spec.in_channels)
        # Absolute: an index records it, to find the checkpoint again from another directory.
        self.checkpoint = None if checkpoint is None else absolute_path(checkpoint)
        self.checkpoint_sha256 = None if checkpoint is None else file_sha256(checkpoint)
        #: The checkpoint's metadata (dataset, split, config, a stored calibration), without its weights.
        self.state_info = None if state is None else {k: v for k, v in state.items() if k not in _WEIGHT_KEYS}
        self._weights_sha256: str | None = None
        self._calibration: dict[str, Any] | None = None
        self._base_mean: BaseClassMean | None = None  # the training classes' mean embedding, made when a head needs it

    @property
    def expected_input(self) -> str:
        """The tensor input this model takes, in words (for error messages)."""
        return self.input.expected

    def images_to_tensor(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        """Float [n,C,H,W] model input from image paths / PIL images, or from an already preprocessed tensor
        (uint8 in 0..255 or float in 0..1, of the model's channels and image size: checked)."""
        return self.input.to_tensor(images)

    @property
    def distance(self) -> DistanceFn:
        """The model's scoring distance (the one its nearest-prototype logits use)."""
        return self.model.learner.scoring_distance

    @torch.no_grad()
    def embed_input(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Embeddings [n, d] (on the model's device) of model input [n, C, H, W], `batch_size` at a time."""
        return torch.cat([self.model.embed(x[i:i + batch_size].to(self.device)) for i in range(0, len(x), batch_size)])

    def embed(self, images: str | Path | Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        """Embeddings [n, d] (on the CPU) of raw images, a preprocessed tensor, or a folder of images (streamed a
        batch at a time, in `embed_items`' order: sorted by path; its file names and labels come from `embed_items`)."""
        if _is_folder(images):
            return self.embed_items(images)[0]
        return self.embed_input(self.images_to_tensor(images)).cpu()

    def embed_items(self, images: Any, labels: Sequence[Hashable] | None = None, *, batch_size: int = 256,
                    progress: bool = False,
                    skip_unreadable: bool = False) -> tuple[torch.Tensor, list[str], list[Hashable] | None]:
        """Embeddings [n, d] (CPU float32) of a folder, a list / iterable of images or a preprocessed tensor, streamed
        `batch_size` images at a time, with each row's item (the absolute file path; `#i` for other images) and label
        (`labels`, or a folder's class folders; None without). Unreadable files are named together at the end (an
        error, or left out with a warning if `skip_unreadable`)."""
        embeddings, items, labels, _ = embed_stream(self, images, labels, batch_size=batch_size, progress=progress,
                                                    skip_unreadable=skip_unreadable)
        return embeddings, items, labels

    def head_context(self, head: Head) -> HeadContext:
        """What `head` may use here: the learner, a generator seeded 0 (the same answers on every call), the mean
        embedding of the checkpoint's training classes (read from where the run read its data, on first use; None
        for a model not loaded from a checkpoint) and the model."""
        if self._base_mean is None and head.needs_base_mean and (self.state_info or {}).get("dataset") is not None:
            state, size = self.state_info, self.model.spec.image_size
            self._base_mean = BaseClassMean(self.model, lambda: checkpoint_base_split(state, image_size=size),
                                            self.device)
        return HeadContext(self.model.learner, episode_generator(0, 0), self._base_mean, self.model)

    def _head(self, head: str | Head | None) -> Head | None:
        if head is None or isinstance(head, Head):
            return head
        if isinstance(head, str):
            return build_head(head)
        raise TypeError(f"head must be a registered head's name or a Head, got {type(head).__name__}")

    def _logits(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, ways: int,
                head: Head | None) -> torch.Tensor:
        """Scores [n_query, ways] of embedded queries: `head`'s, or the learner's own rule without one."""
        if head is not None and head.needs_images:
            raise ValueError("this head adapts the model on the support images, so it needs images, not embeddings "
                             "or folders: pass lists of images or tensors")
        context = None if head is None else self.head_context(head)
        return episode_logits(self.model.learner, support, support_y, query, ways, head, context)

    @torch.no_grad()
    def predict_proba(self, support: str | Path | Sequence[ImageLike] | torch.Tensor,
                      support_labels: Sequence[Hashable] | None,
                      query: str | Path | Sequence[ImageLike] | torch.Tensor, *,
                      head: str | Head | None = None) -> tuple[torch.Tensor, list[Hashable]]:
        """Class probabilities [n_query, classes] and the class order (first appearance in `support_labels`).

        `support` and `query` are lists of images, preprocessed tensors or folders. A support folder holds class
        folders (its labels; pass `support_labels=None`); a query folder is taken in `embed_items`' order (sorted
        by path). Folders are streamed a batch at a time. `head` classifies with a test-time head
        (`fewshot.evaluation.heads`: a registered name such as "simpleshot", or a built `Head`; default: the
        learner's own rule); a transductive head uses the whole query set, and "finetune-backbone" adapts a copy
        of the model (images only, not folders)."""
        head = self._head(head)
        if _is_folder(support) or _is_folder(query):
            support_e, _, labels = self.embed_items(support, support_labels)
            if labels is None:
                raise ValueError("the support needs labels: pass support_labels=, or a folder of class folders")
            return self.proba_from_embeddings(support_e, labels, self.embed_items(query)[0], head=head)
        if support_labels is None:
            raise ValueError("the support needs labels: pass support_labels=, or a folder of class folders")
        support_x = self.images_to_tensor(support)  # first: a single path must not be counted as its characters
        if len(support_labels) != len(support_x):
            raise ValueError(f"got {len(support_x)} support images but {len(support_labels)} support labels")
        classes = list(dict.fromkeys(support_labels))
        index = {label: i for i, label in enumerate(classes)}
        support_y = torch.tensor([index[label] for label in support_labels])
        if head is not None and head.needs_images:
            logits = head.logits_from_images(support_x.to(self.device), support_y.to(self.device),
                                             self.images_to_tensor(query).to(self.device), len(classes),
                                             self.head_context(head))
            return logits.softmax(dim=1).cpu(), classes
        # Embed support and query in one pass, as in training and evaluation.
        embeddings = self.embed_input(torch.cat([support_x, self.images_to_tensor(query)]))
        support_e, query_e = embeddings[: len(support_y)], embeddings[len(support_y):]
        logits = self._logits(support_e, support_y.to(self.device), query_e, len(classes), head)
        return logits.softmax(dim=1).cpu(), classes

    @torch.no_grad()
    def proba_from_embeddings(self, support: torch.Tensor, support_labels: Sequence[Hashable],
                              query: torch.Tensor, *,
                              head: str | Head | None = None) -> tuple[torch.Tensor, list[Hashable]]:
        """`predict_proba` on embeddings (from `embed_items`): class probabilities [n_query, classes] (CPU) and the
        class order (first appearance in `support_labels`), by `head` as in `predict_proba`."""
        if len(support_labels) != len(support):
            raise ValueError(f"got {len(support)} support embeddings but {len(support_labels)} support labels")
        classes = list(dict.fromkeys(support_labels))
        position = {label: i for i, label in enumerate(classes)}
        support_y = torch.tensor([position[label] for label in support_labels], device=self.device)
        logits = self._logits(support.to(self.device), support_y, query.to(self.device), len(classes),
                              self._head(head))
        return logits.softmax(dim=1).cpu(), classes

    def classify(self, support: str | Path | Sequence[ImageLike] | torch.Tensor,
                 support_labels: Sequence[Hashable] | None,
                 query: str | Path | Sequence[ImageLike] | torch.Tensor, *,
                 head: str | Head | None = None) -> list[Hashable]:
        """The support label predicted for each query image (by the learner's test-time rule,
        `Learner.episode_logits`: nearest prototype for most, or by `head`, e.g. "simpleshot"); folders as in
        `predict_proba`."""
        probabilities, classes = self.predict_proba(support, support_labels, query, head=head)
        return [classes[i] for i in probabilities.argmax(dim=1).tolist()]

    # ---- using the embedding: search, verification, open set, clustering, anomalies ------------

    @property
    def weights_sha256(self) -> str:
        """Fingerprint of the architecture and weights (what an index and a calibration are tied to)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_fingerprint(self.model)
        return self._weights_sha256

    def _embed_any(self, images: Any, labels: Sequence[Hashable] | None = None, batch_size: int = 256,
                   progress: bool = False) -> tuple[torch.Tensor, list[str], list[Hashable] | None]:
        """Embeddings of a folder, a list / iterable of images or a preprocessed tensor, streamed in batches."""
        embeddings, items, labels, _ = embed_stream(self, images, labels, batch_size=batch_size, progress=progress)
        return embeddings, items, labels

    def index(self, images_or_folder: Any, labels: Sequence[Hashable] | None = None, *, batch_size: int = 256,
              progress: bool = True, skip_unreadable: bool = False, ann: str | None = None,
              **ann_settings: Any) -> Index:
        """Embed a gallery and index it for search in this model's metric (`fewshot.inference.index.Index`).

        `images_or_folder`: a folder (labels: the class folders, if images sit in them), a list or any iterable
        of image paths / PIL images (with optional `labels`), or a preprocessed tensor. Streamed: one batch of
        `batch_size` images in memory at a time. Unreadable files are named together at the end (an error, or
        left out with a warning if `skip_unreadable`). `ann` "ivf" / "hnsw" adds a faiss structure (settings:
        `fewshot.inference.ann.AnnSettings`) and measures its recall@10 against exact search.
        """
        return build_index(self, images_or_folder, labels, batch_size=batch_size, progress=progress,
                           skip_unreadable=skip_unreadable, ann=ann, **ann_settings)

    def load_index(self, path: str | Path) -> Index:
        """An index saved by `Index.save`, refused if another checkpoint built it."""
        return Index.load(path, self)

    def validation_split(self, data_root: str | Path | None = None) -> ClassSplit:
        """The validation classes of the checkpoint this model was loaded from, prepared as it was trained (read
        from `data_root`, default: where the run read its data)."""
        if self.state_info is None:
            raise ValueError("this model was not loaded from a checkpoint, so its validation classes are unknown; pass "
                             "val_split= (a ClassSplit of classes it was not trained on)")
        return validation_split(self.state_info, self.model.spec.image_size, data_root=data_root)

    def compute_calibration(self, val_split: ClassSplit | DatasetSplits | None = None, far: float | None = None, *,
                            data_root: str | Path | None = None, **options: Any) -> dict[str, Any]:
        """The verification and open-set thresholds at `far` on validation classes (default: this checkpoint's
        own, read from `data_root` or where the run read them; FAR 0.01), without adopting them
        (`fewshot.evaluation.calibration.calibrate` on the bare model)."""
        far = check_far(DEFAULT_FAR if far is None else far)
        if val_split is None:
            split, dataset = self.validation_split(data_root), self.dataset
        else:
            split, dataset = val_split, "given"
        return calibrate_model(self.model, split, far, device=self.device, dataset=dataset, **options)

    def calibrate(self, val_split: ClassSplit | DatasetSplits | None = None, far: float | None = None,
                  **options: Any) -> dict[str, Any]:
        """Choose (and use from now on) the verification and open-set thresholds on validation classes at `far`
        (`compute_calibration`; default: this checkpoint's own validation classes, FAR 0.01)."""
        self._calibration = self.compute_calibration(val_split, far, **options)
        return self._calibration

    @property
    def calibration(self) -> dict[str, Any]:
        """The thresholds in use: those stored in the checkpoint (`state["verification"]`) when they were made
        with these weights, else chosen now on the checkpoint's validation classes (once, with a warning)."""
        if self._calibration is not None:
            return self._calibration
        stored = (self.state_info or {}).get(CHECKPOINT_KEY)
        where = f"checkpoint {self.checkpoint}"
        if stored is not None:
            check_calibration(stored, where)
            if stored["weights_sha256"] == self.weights_sha256:
                self._calibration = stored
                return stored
            reason = f"{where} stores a threshold made with other weights"
        elif self.state_info is None:
            raise ValueError("this model was not loaded from a checkpoint and has no calibration; call "
                             "model.calibrate(val_split, far=...) with classes it was not trained on")
        else:
            reason = f"{where} stores no verification threshold"
        warnings.warn(f"{reason}; choosing one now on its validation classes at FAR {DEFAULT_FAR:g} (once per load; "
                      "fewshot.api.calibrate_checkpoint stores it in the checkpoint)", stacklevel=3)
        return self.calibrate()

    def _pair_distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        distance = self.distance
        with torch.no_grad():
            # The diagonal of blocks: a distance is defined on [n, d] x [m, d], and pairs are rows of both.
            return torch.cat([distance(a[i:i + 512].to(self.device), b[i:i + 512].to(self.device)).diagonal().float().cpu()
                              for i in range(0, len(a), 512)])

    def verify(self, a: Any, b: Any, *, far: float | None = None) -> Verification:
        """Whether images `a` and `b` show the same class: the score (-distance in the model's metric) and the
        decision at the threshold chosen on validation classes (stored in the checkpoint), or at another false
        accept rate `far`. One image each gives floats and a bool; two lists (or tensors) of n give tensors [n]."""
        single = is_single_image(a) and is_single_image(b)
        if single:
            a, b = [a], [b]
        elif is_single_image(a) or is_single_image(b):
            raise TypeError("verify takes two images, or two lists of images of one length (pairs a[i], b[i])")
        point = operating_point(self.calibration, "pair", far)  # first: a missing calibration fails before any work
        first, _, _ = self._embed_any(a)
        second, _, _ = self._embed_any(b)
        if len(first) != len(second):
            raise ValueError(f"verify pairs a[i] with b[i]: got {len(first)} images in a and {len(second)} in b")
        distances = self._pair_distances(first, second)
        scores = -distances
        same = scores >= point["threshold"]
        if single:
            return Verification(float(scores[0]), float(distances[0]), bool(same[0]), point["threshold"], point["far"],
                                point["far_measured"], point["tar"])
        return Verification(scores, distances, same, point["threshold"], point["far"], point["far_measured"], point["tar"])

    def _check_own_index(self, index: Index) -> None:
        if index.meta.get("weights_sha256") != self.weights_sha256:
            raise ValueError(f"this index was built by another checkpoint ({index.meta.get('checkpoint')}); its "
                             "embeddings are not comparable with this model's: rebuild it with this model")

    def _prototypes(self, support: Any, support_labels: Sequence[Hashable] | None) -> tuple[torch.Tensor, list[Hashable]]:
        """Class means of the support (an Index with labels, a labelled folder, or images with labels)."""
        if isinstance(support, Index):
            if support_labels is not None:
                raise ValueError("an index brings its own labels; pass support_labels=None")
            if support.labels is None:
                raise ValueError("this index has no labels, so it has no classes; build it from a folder of class "
                                 "folders, or with labels=")
            self._check_own_index(support)
            embeddings, labels = support.embeddings, support.labels
        else:
            embeddings, _, labels = self._embed_any(support, support_labels)
            if labels is None:
                raise ValueError("the support needs labels: pass support_labels=, or a folder of class folders")
        classes = list(dict.fromkeys(labels))
        position = {label: i for i, label in enumerate(classes)}
        targets = torch.tensor([position[label] for label in labels])
        return prototypes(embeddings, targets, len(classes)), classes

    def identify(self, support: Any, support_labels: Sequence[Hashable] | None, query: Any, *, far: float | None = None,
                 max_distance: float | None = None, unknown: Hashable = "unknown") -> Identification:
        """Open-set identification: each query's nearest class prototype (support: images with labels, a folder
        of class folders, or a labelled Index), or `unknown` when that prototype is farther than the open-set
        threshold chosen on validation classes (at its stored FAR, at `far`, or `max_distance` given directly).

        The threshold was calibrated with the number of support images per class and of known classes in the
        calibration (see `calibration["open_set"]`); far from those, the false accept rate of unknowns moves.
        """
        if max_distance is not None and far is not None:
            raise ValueError("give far= or max_distance=, not both")
        if max_distance is None:
            point = operating_point(self.calibration, "open_set", far)
            max_distance, far = -point["threshold"], point["far"]
        centres, classes = self._prototypes(support, support_labels)
        if unknown in classes:
            raise ValueError(f"{unknown!r} is one of the support labels; pass unknown= another value for the answer "
                             "'none of these classes'")
        queries, _, _ = self._embed_any(query)
        distances, nearest = nearest_prototype(self.distance, queries, centres.to(self.device))
        accepted = distances <= max_distance
        nearest_labels = [classes[i] for i in nearest.tolist()]
        labels = [label if ok else unknown for label, ok in zip(nearest_labels, accepted.tolist())]
        return Identification(labels, nearest_labels, distances, accepted, float(max_distance), far, classes)

    def anomaly_scores(self, reference: Any, query: Any, *, labels: Sequence[Hashable] | None = None,
                       rule: str | None = None) -> torch.Tensor:
        """Distance [q] of each query to the nearest class prototype (rule "prototype": the reference has labels)
        or the nearest reference item (rule "item"); larger means less like the reference. The default rule is
        "prototype" when the reference has labels (given, from class folders, or an index's), else "item"."""
        if rule not in (None, "prototype", "item"):
            raise ValueError(f"unknown anomaly rule {rule!r}; expected 'prototype' or 'item'")
        queries, _, _ = self._embed_any(query)
        if isinstance(reference, Index):
            self._check_own_index(reference)
            embeddings, known = reference.embeddings, reference.labels
            if labels is not None:
                raise ValueError("an index brings its own labels; pass labels=None")
        else:
            embeddings, _, known = self._embed_any(reference, labels)
        rule = rule or ("prototype" if known is not None else "item")
        if rule == "prototype":
            if known is None:
                raise ValueError("rule 'prototype' needs labels for the reference images")
            classes = list(dict.fromkeys(known))
            position = {label: i for i, label in enumerate(classes)}
            centres = prototypes(embeddings, torch.tensor([position[label] for label in known]), len(classes))
            return nearest_prototype(self.distance, queries, centres.to(self.device))[0]
        return exact_search(self.distance, queries, embeddings.to(self.device), 1)[0][:, 0]

    def cluster(self, images: Any, n_clusters: int | None = None, *, method: str = "kmeans",
                max_clusters: int | None = None, seed: int = 0) -> Clustering:
        """Cluster images by their embeddings in this model's metric (`fewshot.inference.clustering.cluster_embeddings`:
        k-means or agglomerative; without `n_clusters`, the number with the best silhouette in 2..max_clusters)."""
        embeddings, items, _ = self._embed_any(images)
        result = cluster_embeddings(embeddings, self.distance, n_clusters, method=method,
                                    max_clusters=max_clusters, seed=seed)
        result.items = items
        return result


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a checkpoint written by `fewshot.train` (weights-only unpickling) as a `TrainedModel`.

    The device is checked first (`fewshot.runtime.resolve_device`: "auto" picks CUDA when present); a checkpoint
    with non-finite weights is refused (`model_from_checkpoint`).
    """
    device = resolve_device(device)
    model, state = model_from_checkpoint(checkpoint, device)
    if "dataset" not in state:
        raise ValueError(f"{checkpoint} records no dataset, so its preprocessing is unknown; expected a checkpoint "
                         "written by fewshot.train")
    return TrainedModel(model, state["dataset"], device, checkpoint=checkpoint, state=state)


def calibrate(checkpoint_or_model: str | Path | TrainedModel | FewShotModel,
              val_split: ClassSplit | DatasetSplits | None = None, far: float | None = None, *,
              device: str | torch.device | None = None, dataset: str | None = None,
              **options: Any) -> dict[str, Any]:
    """The verification and open-set thresholds at `far` on validation classes, for a checkpoint path, a loaded
    `TrainedModel` or a bare `FewShotModel` (whose `dataset` must then be named: it decides the preprocessing and
    the default validation classes); the model does not adopt them
    (`TrainedModel.calibrate` does; `fewshot.evaluation.calibration.calibrate_checkpoint` stores them)."""
    if isinstance(checkpoint_or_model, TrainedModel):
        trained = checkpoint_or_model
    elif isinstance(checkpoint_or_model, (str, Path)):
        trained = load(checkpoint_or_model, device or "cpu")
    elif isinstance(checkpoint_or_model, FewShotModel):
        if dataset is None:
            raise ValueError("calibrate of a bare FewShotModel needs dataset=NAME (one of the registered datasets), "
                             "the data it was trained on")
        trained = TrainedModel(checkpoint_or_model, dataset, device or "cpu")
    else:
        raise TypeError(f"calibrate takes a checkpoint path, a TrainedModel or a FewShotModel; got "
                        f"{type(checkpoint_or_model).__name__}")
    return trained.compute_calibration(val_split, far, **options)
