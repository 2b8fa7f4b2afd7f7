"""Zero-shot evaluation: the GBU protocol (per-class-averaged top-1, generalized u / s / H, calibrated
stacking) and episodes with K = 0 (attribute prototypes only) or K >= 1 (attribute prototype fused with
the support mean), reported with the project's 95% confidence intervals.

GBU (Xian et al. 2018): ZSL top-1 is the mean over unseen classes of each class's accuracy, among the
unseen classes only. GZSL classifies the seen and unseen test images among all classes; u and s are the
per-class-averaged accuracies on the unseen and on the seen test images, H = 2us / (u + s).
Calibrated stacking (Chao et al. 2016) subtracts a constant gamma from every seen class's score before
the argmax; gamma is chosen on validation classes (:func:`choose_calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from episodes import EpisodeSampler
from fewshot.metrics.statistics import Interval, confidence_interval
from fewshot.zeroshot.methods import AttributeModel

#: How many calibration values `choose_calibration` tries: quantiles of the seen-minus-unseen score gaps.
CALIBRATION_CANDIDATES = 401


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in `labels` of the fraction of that class's images predicted right."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or labels.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} must be 1-D of the same length")
    if labels.size == 0:
        raise ValueError("no images to score: labels is empty")
    classes, position = np.unique(labels, return_inverse=True)
    correct = np.bincount(position, weights=(predicted == labels).astype(np.float64), minlength=len(classes))
    return float(np.mean(correct / np.bincount(position, minlength=len(classes))))


def harmonic_mean(u: float, s: float) -> float:
    """H = 2us / (u + s), 0 when both are 0."""
    return 0.0 if u + s == 0 else 2.0 * u * s / (u + s)


@dataclass(frozen=True)
class GeneralizedResult:
    """Generalized zero-shot accuracies (fractions in [0, 1]) at one calibration."""

    u: float
    s: float
    h: float
    calibration: float

    def to_dict(self) -> dict[str, float]:
        return {"u": self.u, "s": self.s, "H": self.h, "calibration": self.calibration}


def _seen_columns(candidates: np.ndarray, seen: np.ndarray) -> np.ndarray:
    mask = np.isin(candidates, seen)
    if mask.all() or not mask.any():
        raise ValueError("generalized evaluation needs both seen and unseen classes among the candidates")
    return mask


def _stacked_predictions(scores: np.ndarray, candidates: np.ndarray, seen_mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """(best seen class, best unseen class, seen-minus-unseen score gap) per image."""
    seen_scores, unseen_scores = scores[:, seen_mask], scores[:, ~seen_mask]
    best_seen = candidates[seen_mask][seen_scores.argmax(1)]
    best_unseen = candidates[~seen_mask][unseen_scores.argmax(1)]
    gap = seen_scores.max(1) - unseen_scores.max(1)
    return best_seen, best_unseen, gap


def generalized_accuracy(scores: np.ndarray, labels: np.ndarray, candidates: np.ndarray, seen: np.ndarray,
                         calibration: float = 0.0) -> GeneralizedResult:
    """GZSL u / s / H of `scores` [n, K] over the classes `candidates` [K], for test images of seen and unseen
    classes (`labels` [n], class ids; an image is "seen" when its label is in `seen`).

    Calibrated stacking: an image goes to its best unseen class when that score is at least its best seen
    score minus `calibration`, i.e. the argmax after subtracting `calibration` from the seen classes' scores.
    """
    scores, labels, candidates = np.asarray(scores), np.asarray(labels), np.asarray(candidates)
    if scores.ndim != 2 or scores.shape != (len(labels), len(candidates)):
        raise ValueError(f"scores has shape {scores.shape}, expected [images={len(labels)}, classes={len(candidates)}]")
    best_seen, best_unseen, gap = _stacked_predictions(scores, candidates, _seen_columns(candidates, seen))
    predicted = np.where(gap <= calibration, best_unseen, best_seen)
    image_seen = np.isin(labels, seen)
    if image_seen.all() or not image_seen.any():
        raise ValueError("generalized evaluation needs test images of both seen and unseen classes")
    u = per_class_accuracy(predicted[~image_seen], labels[~image_seen])
    s = per_class_accuracy(predicted[image_seen], labels[image_seen])
    return GeneralizedResult(u, s, harmonic_mean(u, s), float(calibration))


@dataclass(frozen=True)
class CalibrationFold:
    """Validation scores for choosing the calibration: images of held-out seen-class images and of
    validation ("unseen") classes, scored against all of that fold's classes."""

    scores: np.ndarray
    labels: np.ndarray
    candidates: np.ndarray
    seen: np.ndarray


def choose_calibration(folds: Sequence[CalibrationFold], candidates: int = CALIBRATION_CANDIDATES) -> tuple[float, float]:
    """(calibration, mean validation H): the calibration maximising H averaged over the folds.

    The predictions change only where the calibration crosses an image's seen-minus-unseen score gap, so the
    values tried are quantiles of those gaps (and 0, plain stacking); ties go to the value nearest 0.
    """
    if not folds:
        raise ValueError("choose_calibration needs at least one validation fold")
    prepared = []
    gaps = [np.zeros(1)]
    for fold in folds:
        best_seen, best_unseen, gap = _stacked_predictions(np.asarray(fold.scores), np.asarray(fold.candidates),
                                                           _seen_columns(np.asarray(fold.candidates), fold.seen))
        prepared.append((best_seen, best_unseen, gap, np.asarray(fold.labels), np.isin(fold.labels, fold.seen)))
        gaps.append(gap)
    values = np.unique(np.concatenate([np.quantile(np.concatenate(gaps), np.linspace(0, 1, candidates),
                                                   method="inverted_cdf"), [0.0]]))
    # Try values nearest 0 first, so that among equal H the smallest correction wins.
    values = values[np.argsort(np.abs(values), kind="stable")]
    best_value, best_h = 0.0, -1.0
    for value in values:
        hs = []
        for best_seen, best_unseen, gap, labels, image_seen in prepared:
            predicted = np.where(gap <= value, best_unseen, best_seen)
            u = per_class_accuracy(predicted[~image_seen], labels[~image_seen])
            s = per_class_accuracy(predicted[image_seen], labels[image_seen])
            hs.append(harmonic_mean(u, s))
        if np.mean(hs) > best_h:
            best_value, best_h = float(value), float(np.mean(hs))
    return best_value, best_h


# ----------------------------------------------------------------------------------------------
# Episodes: K = 0 (attributes only) and K >= 1 (attribute-assisted)
# ----------------------------------------------------------------------------------------------


def fused_prototypes(model: AttributeModel, attribute_prototypes: torch.Tensor, support_means: torch.Tensor | None,
                     weight: float) -> torch.Tensor:
    """`weight` * attribute prototype + (1 - weight) * support mean, per class.

    Under the cosine and dot scores only directions are compared, so both are unit-normalised first (the
    attribute prototype's scale is arbitrary there); under the squared distance both already live in
    feature space and are mixed as they are.
    """
    if support_means is None or weight == 1.0:
        return attribute_prototypes
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight!r}")
    if model.score == "sqeuclidean":
        return weight * attribute_prototypes + (1.0 - weight) * support_means
    return weight * F.normalize(attribute_prototypes, dim=-1) + (1.0 - weight) * F.normalize(support_means, dim=-1)


def episode_sampler(labels: np.ndarray, classes: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                    seed: int) -> EpisodeSampler:
    """The sampler behind `episode_accuracies`. K = 0 episodes draw one support item per class and ignore it,
    so that the K = 0 and K = 1 episodes of a seed have the same classes and the same queries."""
    return EpisodeSampler(labels, ways, max(shots, 1), queries, classes=classes, seed=seed, num_episodes=episodes,
                          too_small="exclude")


@torch.no_grad()
def episode_accuracies(model: AttributeModel, features: np.ndarray, labels: np.ndarray, attributes: np.ndarray,
                       classes: np.ndarray, ways: int = 5, shots: int = 0, queries: int = 15, episodes: int = 600,
                       seed: int = 0, fusion_weight: float | Sequence[float] = 0.5,
                       chunk: int = 50) -> np.ndarray:
    """Per-episode accuracy of N-way K-shot episodes over the images of `classes`.

    Prototypes: K = 0, the encoded attributes; K >= 1, `fused_prototypes` of the encoded attributes and the
    support mean (weight 0 is the plain few-shot nearest-prototype classifier). Several fusion weights give
    one row each, on identical episodes. Returns [episodes] (or [weights, episodes]).
    """
    weights = [float(fusion_weight)] if np.isscalar(fusion_weight) else [float(w) for w in fusion_weight]
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if ways < 2:
        raise ValueError(f"ways must be at least 2, got {ways}: a 1-way episode is always 100% accurate")
    sampler = episode_sampler(labels, classes, ways, shots, queries, episodes, seed)
    prepared = model.prepare(features)
    prototypes = model.prototypes(attributes)  # [C, D], indexed by class id
    results = np.zeros((len(weights), episodes))
    for start in range(0, episodes, chunk):
        draw = sampler.draw(np.arange(start, min(start + chunk, episodes)))
        count = len(draw)
        rows = torch.from_numpy(draw.items).to(prepared.device)  # [count * ways, shots' + queries]
        items = prepared[rows].view(count, ways, -1, prepared.shape[1])
        sampled_shots = items.shape[2] - queries
        query = items[:, :, sampled_shots:].reshape(count, ways * queries, -1)
        targets = torch.arange(ways, device=prepared.device).repeat_interleave(queries)
        attribute_part = prototypes[torch.from_numpy(draw.classes).to(prepared.device)]  # [count, ways, D]
        support_mean = items[:, :, :shots].mean(2) if shots > 0 else None
        for w_index, weight in enumerate(weights):
            episode_prototypes = fused_prototypes(model, attribute_part, support_mean, weight)
            scores = torch.stack([model.compatibility(q, p) for q, p in zip(query, episode_prototypes)])
            results[w_index, start:start + count] = (scores.argmax(2) == targets).float().mean(1).cpu().numpy()
    return results[0] if np.isscalar(fusion_weight) else results


def interval_dict(accuracies: np.ndarray) -> dict[str, float]:
    """Mean accuracy and 95% half-width (the project's normal interval) of per-episode accuracies."""
    interval: Interval = confidence_interval(accuracies)
    return {"accuracy": interval.mean, "ci95": interval.half_width, "episodes": interval.n}
