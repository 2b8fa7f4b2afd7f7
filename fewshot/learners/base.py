"""The learner (loss) base class, its registry, and nearest-prototype logits.

A learner turns the embeddings of one episode (or batch) into a training loss. To add one, write one
file with a subclass of :class:`Learner`, decorate it with ``@register_learner("name")`` and import
it before training; the CLI's ``--learner`` choices and ``--loss-arg name=value`` come from its
constructor, and checkpoints rebuild it from its name and arguments. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fewshot.distances import DISTANCES, SQRT_EPS, MetricSpace, build_distance, describe_distance, metric_space
from fewshot.registry import Registry

#: Learners by name. Constructors may take ``distance`` (an ``nn.Module`` built from the distance
#: registry), ``num_classes`` (training classes, for losses with class proxies), ``dim`` (the
#: embedding size) and ``feature_shape`` (the backbone's output before flattening, e.g. ``(64, 7, 7)``,
#: for a learner that compares feature maps); the model injects those.
LEARNERS: Registry = Registry("learner", injected=("distance", "num_classes", "dim", "feature_shape"))
register_learner = LEARNERS.register

#: The distances that are squared metrics (``||L (x - y)||^2``): their square root is a metric, which
#: is what margin-based pair and triplet losses are defined on.
SQUARED_METRICS = ("euclidean", "mahalanobis", "mahalanobis-diag", "mahalanobis-lowrank")


@dataclass
class LearnerOutput:
    """A learner's loss on an episode and its logits ``[n_query, ways]`` (its test-time rule)."""

    loss: torch.Tensor
    logits: torch.Tensor


def episode_ways(support_labels: torch.Tensor) -> int:
    """Number of classes of an episode whose support labels are ``0..ways-1``, each present."""
    if support_labels.dim() != 1 or len(support_labels) == 0:
        raise ValueError(f"support_labels must be a non-empty [n] vector, got {tuple(support_labels.shape)}")
    ways = int(support_labels.max()) + 1
    counts = torch.bincount(support_labels, minlength=ways)
    if int(support_labels.min()) < 0 or bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"support labels must cover 0..ways-1 with every class present; got labels "
            f"{sorted(set(support_labels.tolist()))} (missing {missing})"
        )
    return ways


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """``[ways, d]`` class means of the support embeddings ``[n_support, d]``."""
    if support.dim() != 2 or support_labels.shape != (support.shape[0],):
        raise ValueError(
            f"expected support [n, d] and support_labels [n], got {tuple(support.shape)} "
            f"and {tuple(support_labels.shape)}"
        )
    if len(support_labels) and (int(support_labels.min()) < 0 or int(support_labels.max()) >= ways):
        raise ValueError(f"support labels must lie in 0..{ways - 1}, got {sorted(set(support_labels.tolist()))}")
    counts = torch.bincount(support_labels, minlength=ways)
    if bool((counts == 0).any()):
        raise ValueError(f"classes {(counts == 0).nonzero().flatten().tolist()} have no support example")
    sums = torch.zeros(ways, support.shape[1], dtype=support.dtype, device=support.device)
    sums.index_add_(0, support_labels, support)
    return sums / counts[:, None].to(support.dtype)


def prototype_logits(
    distance: nn.Module,
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    ways: int,
) -> torch.Tensor:
    """``[n_query, ways]`` logits ``-distance(query, prototypes)``."""
    return -distance(query, prototypes(support, support_labels, ways))


#: Queries scored against the prototypes per block in `nearest_prototype` (bounds the [block, ways] matrix).
NEAREST_BLOCK = 4096


@torch.no_grad()
def nearest_prototype(distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], queries: torch.Tensor,
                      centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (float32, CPU) and index (CPU) of each query's nearest prototype among `centres` [ways, d],
    scored in blocks of `NEAREST_BLOCK` queries on the centres' device."""
    best, which = [], []
    for start in range(0, len(queries), NEAREST_BLOCK):
        d, i = distance(queries[start:start + NEAREST_BLOCK].to(centres.device), centres).min(dim=1)
        best.append(d.float().cpu())
        which.append(i.cpu())
    return torch.cat(best), torch.cat(which)


def check_query_labels(query_labels: torch.Tensor, query: torch.Tensor, ways: int) -> None:
    """Raise unless ``query_labels`` is an ``[n_query]`` vector of labels in ``0..ways-1``."""
    if query_labels.shape != (query.shape[0],):
        raise ValueError(
            f"query_labels must have shape ({query.shape[0]},) to match query, got {tuple(query_labels.shape)}"
        )
    if len(query_labels) and (int(query_labels.min()) < 0 or int(query_labels.max()) >= ways):
        raise ValueError(
            f"query labels must lie in 0..{ways - 1} (the support's classes), got "
            f"{sorted(set(query_labels.tolist()))}"
        )


@dataclass
class EpisodeEmbeddings:
    """What a loss sees of one episode: embeddings, episode labels ``0..ways-1`` and, where the
    caller knows them, the global class ids (``classes[label]`` is the training-split class of
    episode label ``label``; proxy losses index their class proxies with it). `scorer` is the
    learner's test-time rule (`Learner.episode_logits`); without it `logits` are nearest-prototype
    logits under `distance`."""

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    ways: int
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    classes: torch.Tensor | None = None
    scorer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = field(
        default=None, repr=False)
    _logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def logits(self) -> torch.Tensor:
        """The episode's logits ``[n_query, ways]`` by the learner's test-time rule (`scorer`), else nearest
        prototype under the learner's distance (computed once)."""
        if self._logits is None:
            if self.scorer is not None:
                self._logits = self.scorer(self.support, self.support_labels, self.query, self.ways)
            else:
                self._logits = prototype_logits(self.distance, self.support, self.support_labels, self.query,
                                                self.ways)
        return self._logits

    @property
    def embeddings(self) -> torch.Tensor:
        """Support and query embeddings pooled ``[n_support + n_query, d]``."""
        return torch.cat([self.support, self.query])

    @property
    def labels(self) -> torch.Tensor:
        """Episode labels of `embeddings`."""
        return torch.cat([self.support_labels, self.query_labels])

    @property
    def global_labels(self) -> torch.Tensor:
        """Global class ids of `embeddings` (needs `classes`)."""
        if self.classes is None:
            raise ValueError("this loss needs the global class ids of the episode (classes=...), which were not given")
        return self.classes.to(self.labels.device)[self.labels]


class Learner(nn.Module):
    """Base class of a loss over an episode's embeddings.

    Subclasses implement :meth:`loss` and may set:

    - ``normalize``: whether the model L2-normalises embeddings by default for this loss (margins
      assume unit norm);
    - ``distances``: the names of the registered distances the loss is defined on (``None``: any);
    - ``default_distance``: the distance used when none is named;
    - ``needs_queries``: whether the loss needs the episode's support / query split (True, the
      default: prototypical losses score queries against support prototypes). A loss over all of
      a batch's embeddings and labels (pair and proxy losses) sets it False and then also trains on
      class-balanced batches, which arrive as a support set with no queries;
    - ``min_class_images`` and ``min_batch_classes``: what a training batch (episode or class-balanced
      batch) must hold for the loss to have a gradient: images of each class and classes. A pair loss
      learns from pairs of the same class against pairs of different classes, so it needs two images of
      a class (a positive pair) and two classes; a proxy loss compares each image with the class
      proxies, which stand in for the other classes, so one image of one class is enough. The trainer
      refuses a batch shape below them (`fewshot.training.config.check_settings`).

    The distance arrives built (``distance``), so a learnable one trains with the loss. At test time
    a learner classifies by :meth:`episode_logits`: nearest prototype under its scoring distance,
    unless it has its own rule (matching networks' attention, the relation network's relation module);
    the logits that training reports (``EpisodeEmbeddings.logits``) follow the same rule.
    """

    normalize: ClassVar[bool] = False
    distances: ClassVar[tuple[str, ...] | None] = None
    default_distance: ClassVar[str] = "euclidean"
    needs_queries: ClassVar[bool] = True
    min_class_images: ClassVar[int] = 1
    min_batch_classes: ClassVar[int] = 2  # one class alone is always classified correctly: nothing to learn

    def __init__(self, distance: nn.Module | None = None) -> None:
        super().__init__()
        self.distance = distance if distance is not None else build_distance(self.default_distance, dim=1)

    @classmethod
    def check_distance(cls, name: str, learner: str | None = None) -> None:
        """Raise a ValueError unless the loss is defined on the distance called `name`."""
        DISTANCES.get_or_raise(name)
        if cls.distances is not None and name not in cls.distances:
            raise ValueError(f"--metric {name!r} does not suit the {learner or cls.__name__} learner; "
                             f"it accepts: {', '.join(cls.distances)}")

    @property
    def scoring_distance(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The distance that nearest-prototype logits and embedding metrics use: the injected
        distance itself, unless a loss trains a function of it (the margin losses: its square root)."""
        return self.distance

    def pair_distance(self, use: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The scoring distance, for a `use` that scores many pairs of single embeddings (verification and
        open-set thresholds, embedding metrics). A learner whose scores are not made for that (a learned
        comparator that runs a network per pair) raises a ValueError naming itself and `use`."""
        return self.scoring_distance

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        """The scalar training loss of one episode."""
        raise NotImplementedError

    def episode_logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                       ways: int) -> torch.Tensor:
        """``[n_query, ways]`` scores with which this learner classifies an episode's queries at test time:
        nearest prototype under its scoring distance, unless a learner has its own rule (matching networks'
        attention over the support set)."""
        return prototype_logits(self.scoring_distance, support, support_labels, query, ways)

    def forward(
        self,
        support: torch.Tensor,
        support_labels: torch.Tensor,
        query: torch.Tensor,
        query_labels: torch.Tensor,
        generator: torch.Generator | None = None,
        classes: torch.Tensor | None = None,
    ) -> LearnerOutput:
        """Loss and logits (by :meth:`episode_logits`) of an episode; `classes` are its global class ids ``[ways]``."""
        ways = episode_ways(support_labels)
        check_query_labels(query_labels, query, ways)
        if self.needs_queries and len(query) == 0:
            # Its loss would be a mean over no queries (NaN): say so instead.
            raise ValueError(f"the {type(self).__name__} loss needs query embeddings (it scores queries against the "
                             "support), got a batch without queries; train it on episodes")
        if classes is not None and classes.shape != (ways,):
            raise ValueError(f"classes must hold one global class id per way ({ways}), got shape {tuple(classes.shape)}")
        batch = EpisodeEmbeddings(support, support_labels, query, query_labels, ways, self.scoring_distance, classes,
                                  scorer=self.episode_logits)
        return LearnerOutput(loss=self.loss(batch, generator), logits=batch.logits)


class SquareRoot:
    """The metric ``sqrt(d)`` of a squared metric ``d`` (Euclidean, Mahalanobis), clamped below at ``eps``
    before the root, which keeps the gradient finite for coincident points. Not a module: it holds no
    parameters of its own, so checkpoints keep the wrapped distance's names."""

    def __init__(self, squared: nn.Module, eps: float = SQRT_EPS) -> None:
        self.squared = squared
        self.eps = eps

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.squared(x, y).clamp_min(self.eps).sqrt()

    def __repr__(self) -> str:
        return f"SquareRoot({self.squared!r})"

    def metric_space(self) -> MetricSpace | None:
        """The wrapped squared metric's space with a square root on top (an "l2" space only)."""
        inner = metric_space(self.squared)
        if inner is None or inner.kind != "l2":
            return None
        return MetricSpace(inner.transform, "l2", lambda raw: inner.to_distance(raw).clamp_min(self.eps).sqrt())

    def describe(self) -> str:
        return f"sqrt of {describe_distance(self.squared)}"


def metric_distances(distance: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """``[n, m]`` distances that are a metric: the square root of the squared metric `distance`."""
    return SquareRoot(distance, eps)(x, y)


class MarginLearner(Learner):
    """Base of the margin losses on a metric (contrastive, triplet): defined on a squared metric whose
    square root they train, over all of a batch's embeddings (episodes or class-balanced batches), with
    nearest-prototype logits under that metric rather than its square."""

    normalize = True
    distances = SQUARED_METRICS
    needs_queries = False
    # Without a positive pair the triplet loss has no triplet, and the contrastive loss only pushes every
    # image away from every other (with one class, only pulls them together): neither learns a class.
    min_class_images = 2

    @property
    def scoring_distance(self) -> SquareRoot:
        return SquareRoot(self.distance)


def build_learner(name: str, distance: nn.Module | None = None, **kwargs: Any) -> Learner:
    """Build the learner called ``name`` (one of ``LEARNERS``) with an optional built ``distance``."""
    factory = LEARNERS.get_or_raise(name)
    LEARNERS.check_arguments(name, kwargs, "learner argument")
    if distance is not None and factory.distances is not None:
        matching = [n for n in factory.distances if type(distance) is DISTANCES[n]]
        if not matching:
            raise ValueError(f"learner {name!r} does not accept a {type(distance).__name__} distance; "
                             f"it accepts: {', '.join(factory.distances)}")
    return factory(distance=distance, **kwargs)
