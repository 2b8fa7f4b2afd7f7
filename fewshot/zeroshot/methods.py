"""Zero-shot methods: an attribute encoder trained on seen classes to align class prototypes with image features.

Every method produces an `AttributeModel`: an encoder (attributes -> prototypes in feature space) with a
compatibility score between a feature and a prototype. The registered methods (`METHODS`):

- ``softmax``: cross-entropy over the seen classes on scaled compatibilities (scaled cosine by default,
  or negative squared distance), the softmax form of DeViSE / ALE-style training.
- ``devise``: ranking hinge summed over the violating classes (Frome et al. 2013), dot-product score.
- ``ale``: ranking hinge with ALE's rank weighting (Akata et al. 2013/2016: violations weighted by
  sum_{k<=r} 1/k divided by r, r the number of violating classes), dot-product score.
- ``sje``: structured hinge on the most violating class (Akata et al. 2015), dot-product score.
- ``eszsl``: the closed form of Romera-Paredes & Torr (2015), on frozen features.

All of them train a linear encoder by default (the bilinear compatibility x^T W a); ``encoder="mlp"`` gives a
small MLP for the gradient methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.registry import Registry
from fewshot.zeroshot.data import check_attributes, check_features, check_labels
from fewshot.zeroshot.encoders import ENCODERS, AttributeEncoder, LinearEncoder, build_encoder

SCORES = ("dot", "cosine", "sqeuclidean")
FEATURE_NORMS = ("l2", "none")
LossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Scores and losses
# ----------------------------------------------------------------------------------------------


def compatibility(features: torch.Tensor, prototypes: torch.Tensor, score: str, scale: float = 1.0) -> torch.Tensor:
    """Compatibility [n, C] of features [n, D] with class prototypes [C, D] (higher is more compatible)."""
    if score == "dot":
        out = features @ prototypes.T
    elif score == "cosine":
        out = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T
    elif score == "sqeuclidean":
        out = -(features.pow(2).sum(1, keepdim=True) - 2 * features @ prototypes.T + prototypes.pow(2).sum(1)[None])
    else:
        raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
    return out * scale


def softmax_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the classes (the margin is unused)."""
    return F.cross_entropy(scores, targets)


def _violations(scores: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """[n, C] hinge terms max(0, margin + s_j - s_y), zero at the true class."""
    true = scores.gather(1, targets[:, None])
    terms = (margin + scores - true).clamp(min=0)
    return terms.scatter(1, targets[:, None], 0.0)


def ranking_hinge_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """DeViSE's ranking hinge: sum over the other classes of max(0, margin + s_j - s_y)."""
    return _violations(scores, targets, margin).sum(1).mean()


def rank_weighted_hinge_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """ALE's ranking loss: the hinge terms weighted by beta_r / r, beta_r = sum_{k<=r} 1/k, with r the
    number of classes that violate the margin (so a true class ranked low costs more)."""
    terms = _violations(scores, targets, margin)
    rank = (terms > 0).sum(1)
    # harmonic[r] = sum_{k<=r} 1/k, with harmonic[0] = 0 for an image without violations.
    steps = torch.cat([torch.zeros(1, dtype=scores.dtype), 1.0 / torch.arange(1, scores.shape[1], dtype=scores.dtype)])
    harmonic = torch.cumsum(steps, 0).to(scores.device)
    weight = harmonic[rank] / rank.clamp(min=1)
    return (weight[:, None] * terms).sum(1).mean()


def structured_hinge_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """SJE's structured hinge: the largest violation max_j max(0, margin + s_j - s_y)."""
    return _violations(scores, targets, margin).max(1).values.mean()


@dataclass(frozen=True)
class Method:
    """A zero-shot method: its loss (None for a closed form) and default score and margin."""

    name: str
    loss: LossFn | None
    score: str
    margin: float
    description: str


METHODS: Registry[Method] = Registry("zero-shot method")
for _method in (
    Method("softmax", softmax_loss, "cosine", 0.0, "cross-entropy on scaled compatibilities (DeViSE/ALE-style softmax)"),
    Method("devise", ranking_hinge_loss, "dot", 0.1, "ranking hinge summed over violating classes (Frome et al. 2013)"),
    Method("ale", rank_weighted_hinge_loss, "dot", 0.1, "rank-weighted ranking hinge (Akata et al. 2016)"),
    Method("sje", structured_hinge_loss, "dot", 0.1, "structured hinge on the worst class (Akata et al. 2015)"),
    Method("eszsl", None, "dot", 0.0, "closed form (Romera-Paredes & Torr 2015)"),
):
    METHODS.register(_method.name, _method)


@dataclass
class ZeroShotConfig:
    """How to train an attribute model. `None` fields take the method's default.

    `scale` multiplies the compatibility before the loss (the inverse temperature of the softmax; 1 for the
    hinge methods). `eszsl_gamma` and `eszsl_lambda` are ESZSL's feature-side and attribute-side
    regularisers (gamma and lambda of the paper). `feature_norm` "l2" divides each feature by its norm.
    """

    method: str = "ale"
    encoder: str = "linear"
    encoder_args: dict[str, Any] = field(default_factory=dict)
    score: str | None = None
    scale: float | None = None
    margin: float | None = None
    # Ten epochs: on planted CUB-sized problems (2,048-d features, 7,057 images) 30 epochs overfit the
    # 2,048 x 312 map and lost 3 to 5 points of ZSL top-1 (docs/zeroshot.md).
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    eszsl_gamma: float = 1.0
    eszsl_lambda: float = 1.0
    feature_norm: str = "l2"
    seed: int = 0
    device: str = "cpu"

    def resolved(self) -> ZeroShotConfig:
        """A copy with the method's defaults filled in and every setting checked."""
        method = METHODS.get_or_raise(self.method)
        score = method.score if self.score is None else self.score
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"unknown feature_norm {self.feature_norm!r}; expected one of {FEATURE_NORMS}")
        ENCODERS.get_or_raise(self.encoder)
        ENCODERS.check_arguments(self.encoder, self.encoder_args, "--encoder-arg")
        if method.loss is None and (self.encoder != "linear" or score != "dot"):
            raise ValueError(f"{self.method} is a closed form of a linear encoder with a dot-product score; "
                             f"got encoder={self.encoder!r}, score={score!r}")
        # The squared distance's default scale depends on the features: it is set when training starts.
        scale = {"cosine": 16.0, "dot": 1.0, "sqeuclidean": None}[score] if self.scale is None else float(self.scale)
        margin = method.margin if self.margin is None else float(self.margin)
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("lr", self.lr), ("scale", 1.0 if scale is None else scale)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name, value in (("weight_decay", self.weight_decay), ("margin", margin),
                            ("eszsl_gamma", self.eszsl_gamma), ("eszsl_lambda", self.eszsl_lambda)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        resolved = ZeroShotConfig(**{**asdict(self), "score": score, "scale": scale, "margin": margin})
        return resolved

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# The trained model
# ----------------------------------------------------------------------------------------------


class AttributeModel(nn.Module):
    """An attribute encoder with its compatibility score: prototypes from attributes, scores for features.

    `prepare` applies the feature normalisation the encoder was trained with; `scores` and `predict`
    take raw features and do it themselves.
    """

    def __init__(self, encoder: AttributeEncoder, score: str, scale: float = 1.0, feature_norm: str = "l2",
                 config: ZeroShotConfig | None = None) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"unknown feature_norm {feature_norm!r}; expected one of {FEATURE_NORMS}")
        self.encoder = encoder
        self.score = score
        self.scale = float(scale)
        self.feature_norm = feature_norm
        self.config = config
        self.fit_seconds = 0.0

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def prepare(self, features: Any) -> torch.Tensor:
        """Float32 features on the model's device, normalised as in training."""
        if not isinstance(features, torch.Tensor):
            features = torch.from_numpy(check_features(features))
        features = features.to(self.device, torch.float32)
        if features.dim() != 2 or features.shape[1] != self.encoder.embedding_dim:
            raise ValueError(f"features have shape {tuple(features.shape)}, but this model's prototypes are "
                             f"{self.encoder.embedding_dim}-dimensional (expected [n, {self.encoder.embedding_dim}])")
        return F.normalize(features, dim=1) if self.feature_norm == "l2" else features

    def _attributes(self, attributes: Any) -> torch.Tensor:
        if not isinstance(attributes, torch.Tensor):
            attributes = torch.from_numpy(check_attributes(attributes))
        return attributes.to(self.device, torch.float32)

    def prototypes(self, attributes: Any) -> torch.Tensor:
        """Class prototypes [C, D] in feature space from class attributes [C, A]."""
        return self.encoder(self._attributes(attributes))

    def compatibility(self, prepared: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Scores [n, C] of already prepared features against prototypes."""
        return compatibility(prepared, prototypes, self.score, self.scale)

    @torch.no_grad()
    def scores(self, features: Any, attributes: Any, batch_size: int = 8192) -> np.ndarray:
        """Compatibility scores [n, C] (numpy float32) of raw features with the classes of `attributes`."""
        was_training = self.training
        self.eval()
        try:
            prototypes = self.prototypes(attributes)
            prepared = self.prepare(features)
            out = [self.compatibility(prepared[i:i + batch_size], prototypes) for i in range(0, len(prepared), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out).cpu().numpy()

    def predict(self, features: Any, attributes: Any, classes: Any | None = None) -> np.ndarray:
        """The best class for each feature: ids from `classes` (one per attribute row; default 0..C-1)."""
        scores = self.scores(features, attributes)
        ids = np.arange(scores.shape[1]) if classes is None else np.asarray(classes)
        if len(ids) != scores.shape[1]:
            raise ValueError(f"classes has {len(ids)} ids but attributes has {scores.shape[1]} rows")
        return ids[scores.argmax(1)]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _training_arrays(features: Any, labels: Any, attributes: Any, classes: Any | None):
    features = check_features(features)
    labels = check_labels(labels, len(features), "labels")
    attributes = check_attributes(attributes)
    if labels.max() >= len(attributes):
        missing = np.unique(labels[labels >= len(attributes)])
        raise ValueError(f"labels include classes {missing[:10].tolist()} without attributes: attributes has "
                         f"{len(attributes)} classes (ids 0..{len(attributes) - 1})")
    classes = np.unique(labels) if classes is None else np.unique(np.asarray(classes, dtype=np.int64))
    keep = np.isin(labels, classes)
    if keep.sum() == 0:
        raise ValueError(f"no image has a label among the training classes {classes[:10].tolist()}")
    position = np.searchsorted(classes, labels[keep])
    if len(classes) < 2:
        raise ValueError(f"training needs at least 2 classes, got {classes.tolist()}")
    return features[keep], position, attributes[classes], classes


def fit(features: Any, labels: Any, attributes: Any, classes: Any | None = None,
        config: ZeroShotConfig | None = None) -> AttributeModel:
    """Train an attribute model on the images of `classes` (default: every labelled class).

    Args:
        features: [N, D] features (or backbone embeddings) of the training images.
        labels: [N] class ids, indexing the rows of `attributes`.
        attributes: [C, A] one attribute vector per class.
        classes: the class ids to train on (the seen classes); images of other classes are ignored.
        config: the method and its settings (`ZeroShotConfig()`: ALE, linear encoder).
    """
    config = (config or ZeroShotConfig()).resolved()
    started = time.perf_counter()
    x, y, s, _ = _training_arrays(features, labels, attributes, classes)
    device = torch.device(config.device)
    method = METHODS[config.method]
    if method.loss is None:
        model = _fit_eszsl(x, y, s, config, device)
    else:
        model = _fit_gradient(x, y, s, config, method, device)
    model.fit_seconds = time.perf_counter() - started
    return model.eval()


def _new_model(config: ZeroShotConfig, attribute_dim: int, feature_dim: int, device: torch.device) -> AttributeModel:
    # A private RNG state: building the encoder must not move the caller's global torch seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = build_encoder(config.encoder, attribute_dim, feature_dim, **config.encoder_args)
    return AttributeModel(encoder, config.score, 1.0 if config.scale is None else config.scale, config.feature_norm,
                          config).to(device)


def gaussian_scale(features: torch.Tensor, targets: torch.Tensor) -> float:
    """D / (2 v), v the mean squared distance of a feature to its class mean: with isotropic Gaussian
    classes of per-dimension variance v / D, softmax(-scale * squared distance) is the class posterior."""
    means = torch.zeros(int(targets.max()) + 1, features.shape[1], device=features.device)
    means.index_add_(0, targets, features)
    means /= torch.bincount(targets, minlength=len(means)).clamp(min=1)[:, None].to(features.dtype)
    spread = (features - means[targets]).pow(2).sum(1).mean().item()
    return features.shape[1] / (2.0 * max(spread, 1e-12))


def _fit_gradient(x: np.ndarray, y: np.ndarray, s: np.ndarray, config: ZeroShotConfig, method: Method,
                  device: torch.device) -> AttributeModel:
    model = _new_model(config, s.shape[1], x.shape[1], device)
    features = model.prepare(torch.from_numpy(x))
    if config.scale is None:
        model.scale = gaussian_scale(features, torch.from_numpy(y).to(device))
    targets = torch.from_numpy(y).to(device)
    attributes = torch.from_numpy(s).to(device, torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(features), generator=generator).to(device)
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            scores = model.compatibility(features[batch], model.encoder(attributes))
            loss = method.loss(scores, targets[batch], config.margin)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{config.method} training diverged (loss {loss.item()}); lower lr={config.lr}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def eszsl_targets(y: np.ndarray, num_classes: int) -> np.ndarray:
    """ESZSL's ground-truth matrix Y [m, z]: 1 at each image's class, 0 elsewhere.

    The paper writes Y in {-1, 1}. With attributes that are not centred (GBU's are non-negative), the -1
    entries add the term -X^T 1 (sum_c s_c)^T, a class bias that grows with the number of classes; on
    planted CUB problems it cost most of the accuracy, so the one-hot form is used.
    """
    targets = np.zeros((len(y), num_classes))
    targets[np.arange(len(y)), y] = 1.0
    return targets


def eszsl_closed_form(x: np.ndarray, targets: np.ndarray, s: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """ESZSL's V [D, A] = (X^T X + gamma I)^-1 X^T Y S (S^T S + lambda I)^-1, the minimiser of

        ||X V S^T - Y||^2 + gamma ||V S^T||^2 + lambda ||X V||^2 + gamma lambda ||V||^2

    with features X [m, D] (rows are images), targets Y [m, z] and class attributes S [z, A]; the score of
    image x for class c is x^T V s_c. Computed in float64."""
    x = torch.as_tensor(x, dtype=torch.float64)
    targets = torch.as_tensor(targets, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    feature_gram = x.T @ x + gamma * torch.eye(x.shape[1], dtype=torch.float64)
    attribute_gram = s.T @ s + lam * torch.eye(s.shape[1], dtype=torch.float64)
    right = x.T @ (targets @ s)
    # Both Gram matrices are symmetric positive definite (gamma, lambda > 0): Cholesky solves.
    left = torch.cholesky_solve(right, torch.linalg.cholesky(feature_gram))
    v = torch.cholesky_solve(left.T, torch.linalg.cholesky(attribute_gram)).T
    return v.numpy()


class ESZSLSolver:
    """ESZSL for many (gamma, lambda) at once, for choosing the regularisers on validation classes: the feature
    Gram matrix is formed once and factorised once per gamma (Cholesky); the attribute side, small, is
    eigendecomposed once, so that each lambda only rescales columns in its eigenbasis."""

    def __init__(self, x: np.ndarray, targets: np.ndarray, s: np.ndarray) -> None:
        x = torch.as_tensor(x, dtype=torch.float64)
        s = torch.as_tensor(s, dtype=torch.float64)
        self.feature_gram = x.T @ x
        self.attribute_values, self.attribute_vectors = torch.linalg.eigh(s.T @ s)  # small: A x A
        self.right = x.T @ (torch.as_tensor(targets, dtype=torch.float64) @ s)
        self._left: dict[float, torch.Tensor] = {}

    def left(self, gamma: float) -> torch.Tensor:
        """(X^T X + gamma I)^-1 X^T Y S, rotated into the attribute eigenbasis [D, A] (cached per gamma)."""
        if gamma not in self._left:
            eye = torch.eye(len(self.feature_gram), dtype=torch.float64)
            factor = torch.linalg.cholesky(self.feature_gram + gamma * eye)
            self._left[gamma] = torch.cholesky_solve(self.right, factor) @ self.attribute_vectors
        return self._left[gamma]

    def solve(self, gamma: float, lam: float) -> np.ndarray:
        """V [D, A] for these regularisers."""
        return ((self.left(gamma) / (self.attribute_values + lam)[None, :]) @ self.attribute_vectors.T).numpy()

    def score_grid(self, features: np.ndarray, attributes: np.ndarray, gammas: Sequence[float],
                   lams: Sequence[float]) -> Iterator[tuple[float, float, np.ndarray]]:
        """(gamma, lambda, scores [n, z]) of prepared `features` against class `attributes` for every pair,
        without forming V: scores = (X L_gamma) diag(1 / (sigma + lambda)) (S Q)^T."""
        x = torch.as_tensor(features, dtype=torch.float64)
        rotated_attributes = torch.as_tensor(attributes, dtype=torch.float64) @ self.attribute_vectors
        for gamma in gammas:
            projected = x @ self.left(gamma)
            for lam in lams:
                yield gamma, lam, ((projected / (self.attribute_values + lam)[None, :]) @ rotated_attributes.T).numpy()


def eszsl_model(v: np.ndarray, config: ZeroShotConfig, device: torch.device | str = "cpu") -> AttributeModel:
    """An AttributeModel whose linear encoder is ESZSL's V."""
    encoder = LinearEncoder(v.shape[1], v.shape[0])
    with torch.no_grad():
        encoder.linear.weight.copy_(torch.as_tensor(v, dtype=torch.float32))
    return AttributeModel(encoder, "dot", 1.0, config.feature_norm, config).to(device)


def _fit_eszsl(x: np.ndarray, y: np.ndarray, s: np.ndarray, config: ZeroShotConfig,
               device: torch.device) -> AttributeModel:
    if not (config.eszsl_gamma > 0 and config.eszsl_lambda > 0):
        raise ValueError(f"ESZSL needs eszsl_gamma > 0 and eszsl_lambda > 0, got {config.eszsl_gamma}, "
                         f"{config.eszsl_lambda}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if config.feature_norm == "l2" else x
    v = eszsl_closed_form(x, eszsl_targets(y, len(s)), s, config.eszsl_gamma, config.eszsl_lambda)
    return eszsl_model(v, config, device)


def prepared_numpy(features: np.ndarray, feature_norm: str) -> np.ndarray:
    """Features normalised as `AttributeModel.prepare` does, in numpy (float64)."""
    x = np.asarray(features, dtype=np.float64)
    if feature_norm == "l2":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def log_grid(low: int, high: int) -> list[float]:
    """10**k for k = low..high."""
    return [float(10.0 ** k) for k in range(low, high + 1)]


ESZSL_GRID = (log_grid(0, 4), log_grid(-3, 1))
"""The (gamma, lambda) candidates tried when ESZSL's regularisers are chosen on validation classes."""
