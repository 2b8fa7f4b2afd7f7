"""Relation Network (Sung et al., 2018): a learned relation module scores each query against each class.

The relation module compares feature maps, not flat embeddings: the model injects the backbone's output shape
(``feature_shape``, e.g. ``(64, 7, 7)`` for Conv-4 with ``pools=2`` on 28x28 Omniglot, the paper's embedding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EpisodeEmbeddings, Learner, prototypes, register_learner

__all__ = ["RELATION_LOSSES", "SUPPORT_POOLINGS", "RelationLearner", "RelationModule", "RelationScore"]

#: The relation learner's losses: ``mse`` of the relation scores against the one-hot labels (the paper's),
#: ``ce`` the cross-entropy of the softmax over the log relation scores (its logits).
RELATION_LOSSES = ("mse", "ce")
#: How a class's support feature maps become the one map the relation module compares: their ``sum`` (the
#: paper's), whose scale grows with the shots, so a model is tied to the shot count it was trained with, or their
#: ``mean``, the same input scale whatever the number of shots (one model for 1-shot and 5-shot episodes).
SUPPORT_POOLINGS = ("sum", "mean")
#: Without gradients (evaluation, search) pairs are scored in blocks of at most this many elements of the
#: relation module's first feature maps, which bounds memory for large galleries.
PAIR_BLOCK_ELEMENTS = 1 << 24


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"relation learner {name} must be a positive whole number, got {value!r}")
    return value


class RelationModule(nn.Module):
    """Two [3x3 conv (padding 1), batch norm, ReLU, 2x2 max-pool] blocks, then a fully connected layer with a
    ReLU and one with a single output: the raw relation logit of a (class map, query map) pair, whose
    sigmoid is the relation score. A block pools only a map at least 2 wide and high (a 1x1 map, e.g. a
    globally pooled embedding, stays 1x1), so 64x7x7 maps become 64x3x3 and then 64x1x1, as in the paper."""

    def __init__(self, feature_shape: tuple[int, int, int], channels: int = 64, hidden: int = 8) -> None:
        super().__init__()
        in_channels, height, width = feature_shape
        self.in_channels = in_channels
        # One convolution over the concatenation [class map, query map], as in the paper.
        self.conv1 = nn.Conv2d(2 * in_channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.BatchNorm2d(channels)
        self.pool1 = height >= 2 and width >= 2
        height, width = (height // 2, width // 2) if self.pool1 else (height, width)
        self.pool2 = height >= 2 and width >= 2
        height, width = (height // 2, width // 2) if self.pool2 else (height, width)
        self.fc1 = nn.Linear(channels * height * width, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Relation logits ``[n, m]`` of each query map ``queries [n, C, H, W]`` against each class map
        ``classes [m, C, H, W]``."""
        # The first convolution is linear in its input channels (and the zero padding pads both halves), so the
        # convolution of a concatenated pair is the class half's plus the query half's: each map is convolved
        # once, not once per pair. The results equal the concatenated convolution.
        weight = self.conv1.weight
        class_part = F.conv2d(classes, weight[:, : self.in_channels], self.conv1.bias, padding=1)
        query_part = F.conv2d(queries, weight[:, self.in_channels :], None, padding=1)
        if self.training:
            # Batch norm in training mode normalises over all of an episode's pairs at once: no blocks.
            return self._pairs(query_part, class_part)
        # In eval mode the pairs are independent: scored in blocks that bound memory.
        n, m = len(query_part), len(class_part)
        if n == 0 or m == 0:
            return query_part.new_zeros(n, m)
        per_pair = class_part[0].numel()
        columns = min(m, max(1, PAIR_BLOCK_ELEMENTS // per_pair))
        rows = max(1, PAIR_BLOCK_ELEMENTS // (per_pair * columns))
        return torch.cat([torch.cat([self._pairs(query_part[r:r + rows], class_part[c:c + columns])
                                     for c in range(0, m, columns)], dim=1)
                          for r in range(0, n, rows)])

    def _pairs(self, query_part: torch.Tensor, class_part: torch.Tensor) -> torch.Tensor:
        n, m = len(query_part), len(class_part)
        x = (query_part[:, None] + class_part[None]).flatten(0, 1)
        # ReLU commutes with the max-pool (it is monotone): pooled first, it touches a quarter of the values.
        x = self.norm1(x)
        x = F.relu(F.max_pool2d(x, 2) if self.pool1 else x)
        x = self.norm2(self.conv2(x))
        x = F.relu(F.max_pool2d(x, 2) if self.pool2 else x)
        return self.fc2(F.relu(self.fc1(x.flatten(1)))).view(n, m)


class RelationScore:
    """The relation learner's scores as a distance, for consumers that take one (nearest prototype, exact
    search, agglomerative clustering): ``d(x_i, y_j) = -log sigmoid(r(y_j, x_i))``, minus the log relation
    score of query `x_i` against class or gallery item `y_j`, so the nearest is the most related (>= 0).

    It is neither symmetric nor a metric and runs the relation module on every pair: it declares no metric
    space, so a faiss index and k-means refuse it. Not a module: the learner holds the parameters."""

    def __init__(self, learner: RelationLearner) -> None:
        self.learner = learner

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(self.learner.relation_logits(y, x))

    def metric_space(self) -> None:
        """None: no faiss or k-means geometry orders pairs as a learned relation module does."""
        return None

    def describe(self) -> str:
        return "-log relation score of the relation learner (a learned comparator, not a metric)"

    def __repr__(self) -> str:
        return "RelationScore(the relation learner's learned relation module, not a metric)"


@register_learner("relation")
class RelationLearner(Learner):
    """Relation Network (Sung et al., 2018): a learned relation module (`RelationModule`) over the
    concatenation of a class's support feature map (the sum of its shots' maps, or their mean) and a
    query's; its sigmoid output is the relation score of the pair.

    Loss (``loss``): ``mse``, the mean squared error of the relation scores against the one-hot labels (the
    paper's), or ``ce``, the cross-entropy of the softmax over the log relation scores. The logits, in training
    and at test time (:meth:`episode_logits`: the evaluator, ``FewShotModel.logits``, ``fewshot.api``'s
    classify and predict_proba), are the log relation scores, so the predicted class is the most related one and
    ``predict_proba`` gives relation scores normalised over the classes.

    Maps: the backbone's output before flattening, injected as ``feature_shape`` by the model (Conv-4 declares
    it; use ``--backbone-arg pools=2`` for the paper's 64x7x7 Omniglot maps). A backbone that outputs a vector
    gives ``(dim, 1, 1)`` maps, on which the relation module is a small MLP.

    Where the scores cannot be used: the scoring distance (`RelationScore`, the -log relation score) serves
    nearest-prototype consumers and exact search, but is not a metric: a faiss index and k-means refuse it, and
    the uses that score many single pairs (verification and open-set thresholds, so ``verify`` and
    calibrated ``identify``; the evaluator's embedding metrics) raise a ValueError naming this learner
    (:meth:`pair_distance`). Consumers that build class means themselves (``identify``, ``anomaly_scores``)
    compare the mean of a class's maps, whatever ``support`` says.

    ``support="sum"`` feeds the module maps whose scale grows with the shots: evaluate such a model at the shot
    count it was trained with (a 1-shot model scores 5-shot episodes near chance); ``support="mean"`` serves any.

    ``distance`` is unused (the relation module is the comparator); the model's metric stays ``euclidean``.
    """

    # The relation module replaces the distance; one name keeps specs and checkpoints uniform.
    distances = ("euclidean",)

    def __init__(self, distance: nn.Module | None = None, dim: int | None = None,
                 feature_shape: Sequence[int] | None = None, loss: str = "mse", support: str = "sum",
                 channels: int = 64, hidden: int = 8) -> None:
        super().__init__(distance)
        if loss not in RELATION_LOSSES:
            raise ValueError(f"relation learner loss must be one of {', '.join(RELATION_LOSSES)}, got {loss!r}")
        if support not in SUPPORT_POOLINGS:
            raise ValueError(f"relation learner support must be one of {', '.join(SUPPORT_POOLINGS)} (how a class's "
                             f"shots become one feature map), got {support!r}")
        channels, hidden = _positive_int("channels", channels), _positive_int("hidden", hidden)
        self.map_shape = self._map_shape(dim, feature_shape)
        self.loss_name = loss
        self.support = support
        self.relation = RelationModule(self.map_shape, channels, hidden)

    @staticmethod
    def _map_shape(dim: int | None, feature_shape: Sequence[int] | None) -> tuple[int, int, int]:
        """``(C, H, W)`` of the maps compared: `feature_shape`, or ``(dim, 1, 1)`` for a flat embedding."""
        if feature_shape is None:
            if dim is None:
                raise ValueError("the relation learner needs the backbone's feature_shape (C, H, W) or the embedding "
                                 "size dim; FewShotModel injects both")
            feature_shape = (dim,)
        shape = tuple(feature_shape)
        if not shape or len(shape) > 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"relation learner feature_shape must be (C, H, W) or (dim,) of positive ints, got "
                             f"{feature_shape!r}")
        shape = (*shape, *([1] * (3 - len(shape))))
        if dim is not None and math.prod(shape) != dim:
            raise ValueError(f"relation learner feature_shape {tuple(feature_shape)} holds {math.prod(shape)} values "
                             f"but the embedding has dim={dim}")
        return shape  # type: ignore[return-value]

    def feature_maps(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Flat embeddings ``[n, C*H*W]`` as the backbone's maps ``[n, C, H, W]``."""
        size = math.prod(self.map_shape)
        if embeddings.dim() != 2 or embeddings.shape[1] != size:
            raise ValueError(f"the relation learner compares {self.map_shape} feature maps: expected embeddings "
                             f"[n, {size}], got {tuple(embeddings.shape)}")
        return embeddings.reshape(len(embeddings), *self.map_shape)

    def class_features(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
        """``[ways, C*H*W]``: per class, the sum (``support="sum"``) or mean of its support embeddings."""
        self.feature_maps(support)  # checks their size before they are pooled
        means = prototypes(support, support_labels, ways)
        if self.support == "mean":
            return means
        counts = torch.bincount(support_labels, minlength=ways).to(means.dtype)
        return means * counts[:, None]

    def relation_logits(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Raw relation logits ``[n, m]`` (the relation score is their sigmoid) of flat query embeddings
        ``[n, d]`` against flat class embeddings ``[m, d]``."""
        return self.relation(self.feature_maps(classes), self.feature_maps(queries))

    def episode_logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                       ways: int) -> torch.Tensor:
        """``[n_query, ways]`` log relation scores of each query against each class."""
        return F.logsigmoid(self.relation_logits(self.class_features(support, support_labels, ways), query))

    @property
    def scoring_distance(self) -> RelationScore:
        """The -log relation score (`RelationScore`): not a metric."""
        return RelationScore(self)

    def pair_distance(self, use: str) -> NoReturn:
        """Always a ValueError: the relation module is run per pair and is not a metric (see the class)."""
        raise ValueError(f"{use} scores many pairs of single embeddings by the model's distance, but the relation "
                         "learner (Relation Network) compares embeddings with its learned relation module, a network "
                         "run per pair and not a metric: use its episode accuracy (fewshot evaluate), classify / "
                         "predict_proba, or exact search instead")

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        if self.loss_name == "ce":
            return F.cross_entropy(batch.logits, batch.query_labels)
        scores = batch.logits.exp()  # the relation scores, in (0, 1)
        return F.mse_loss(scores, F.one_hot(batch.query_labels, batch.ways).to(scores.dtype))

    def extra_repr(self) -> str:
        return f"maps={self.map_shape}, loss={self.loss_name}, support={self.support}"
