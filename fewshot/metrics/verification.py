"""Verification over same / different class pairs: scores, ROC, EER, TAR at a FAR, thresholds.

Scores are similarities: higher means "more likely the same class", and a pair is accepted as
same-class when ``score >= threshold``. Distances follow the opposite convention (smaller is
closer); :func:`pair_scores` returns ``-distance``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import integrate
from torch import Tensor

from fewshot.metrics.embeddings import (
    Distance,
    check_embeddings,
    pairwise,
    resolve_distance,
)
from fewshot.metrics.statistics import as_finite_vector, to_numpy

THRESHOLD_CRITERIA = ("eer", "accuracy")


def pair_scores(
    embeddings: Tensor,
    labels: Tensor,
    distance: Distance = torch.cdist,
    pairs: Tensor | ArrayLike | None = None,
    *,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Similarity scores (``-distance``) and same-class flags for pairs of embeddings.

    Without ``pairs``: all ``i < j`` pairs in ``np.triu_indices(n, 1)`` order (``n (n-1) / 2``
    of them, so 50M for n = 10k: pass a pair list for large sets). With ``pairs``: an integer
    ``[p, 2]`` array of index pairs, scored in that order. Returns float64 scores and bool flags.
    """
    embeddings, labels = check_embeddings(embeddings, labels)
    distance_fn = resolve_distance(distance, embeddings.shape[1])
    n = embeddings.shape[0]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    score_chunks: list[Tensor] = []
    same_chunks: list[Tensor] = []
    with torch.no_grad():
        if pairs is None:
            columns = torch.arange(n)
            for start in range(0, n, chunk_size):
                rows = torch.arange(start, min(start + chunk_size, n))
                upper = columns[None, :] > rows[:, None]
                block = pairwise(distance_fn, embeddings[rows], embeddings).cpu()
                score_chunks.append(-block[upper])
                same_chunks.append((labels[rows][:, None] == labels[None, :])[upper])
        else:
            pairs = torch.as_tensor(pairs)
            if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype.is_floating_point:
                raise ValueError(
                    f"pairs must be an integer [p, 2] array, got shape {tuple(pairs.shape)} "
                    f"and dtype {pairs.dtype}"
                )
            if pairs.numel() and (pairs.min() < 0 or pairs.max() >= n):
                raise ValueError(
                    f"pair indices must lie in [0, {n}), got range "
                    f"[{int(pairs.min())}, {int(pairs.max())}]"
                )
            for start in range(0, pairs.shape[0], chunk_size):
                first, second = pairs[start : start + chunk_size].long().unbind(1)
                block = pairwise(distance_fn, embeddings[first], embeddings[second])
                score_chunks.append(-block.diagonal().cpu())
                same_chunks.append(labels[first] == labels[second])
    if not score_chunks:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=bool)
    scores = torch.cat(score_chunks).double().numpy()
    same = torch.cat(same_chunks).numpy()
    return scores, same


def _check_scores(scores: ArrayLike | Tensor, same: ArrayLike | Tensor) -> tuple[
    np.ndarray, np.ndarray
]:
    score_array = as_finite_vector(scores, "scores")
    same_array = to_numpy(same)
    if same_array.shape != score_array.shape:
        raise ValueError(
            f"scores and same must have the same length, got {score_array.shape} and "
            f"{same_array.shape}"
        )
    if same_array.dtype != bool:
        if not np.isin(same_array, (0, 1)).all():
            raise ValueError("same must hold booleans (or 0/1), one per score")
        same_array = same_array.astype(bool)
    n_same = int(same_array.sum())
    n_different = same_array.size - n_same
    if n_same == 0 or n_different == 0:
        raise ValueError(
            f"need at least one same-class and one different-class pair, got {n_same} same "
            f"and {n_different} different"
        )
    return score_array, same_array


def roc_curve(
    scores: ArrayLike | Tensor, same: ArrayLike | Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC operating points ``(far, tar, thresholds)``, one per distinct score plus the start.

    At ``thresholds[i]`` a pair is accepted when ``score >= thresholds[i]``; ``far[i]`` is the
    fraction of different-class pairs accepted (false accept rate) and ``tar[i]`` the fraction
    of same-class pairs accepted (true accept rate). The first point is ``(0, 0)`` at
    ``threshold = inf``; tied scores form a single point.
    """
    score_array, same_array = _check_scores(scores, same)
    order = np.argsort(-score_array, kind="stable")
    sorted_scores = score_array[order]
    sorted_same = same_array[order]
    # Last position of each run of equal scores: lowering the threshold past a tied value
    # accepts the whole run at once.
    run_ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0.0), sorted_scores.size - 1]
    true_accepts = np.cumsum(sorted_same)[run_ends]
    false_accepts = np.cumsum(~sorted_same)[run_ends]
    tar = np.r_[0.0, true_accepts / sorted_same.sum()]
    far = np.r_[0.0, false_accepts / (~sorted_same).sum()]
    thresholds = np.r_[np.inf, sorted_scores[run_ends]]
    return far, tar, thresholds


def roc_auc(scores: ArrayLike | Tensor, same: ArrayLike | Tensor) -> float:
    """Area under the ROC curve: P(score of a same pair > score of a different pair), ties 1/2."""
    far, tar, _ = roc_curve(scores, same)
    return float(integrate.trapezoid(tar, far))


def equal_error_rate(
    scores: ArrayLike | Tensor, same: ArrayLike | Tensor
) -> tuple[float, float]:
    """Equal error rate and the threshold of the operating point nearest to it.

    The EER is where the false accept rate equals the false reject rate ``1 - tar``, found by
    linear interpolation between the two ROC points that bracket the crossing. The returned
    threshold is the ROC point (a real score, or ``inf``) with the smallest ``|far - frr|``;
    on small sets its own error rates can differ from the interpolated EER.
    """
    far, tar, thresholds = roc_curve(scores, same)
    gap = (1.0 - tar) - far  # frr - far: starts at 1, ends at -1, never increases
    last_nonnegative = int(np.flatnonzero(gap >= 0.0)[-1])
    if gap[last_nonnegative] == 0.0:
        eer = far[last_nonnegative]
    else:
        after = last_nonnegative + 1
        fraction = gap[last_nonnegative] / (gap[last_nonnegative] - gap[after])
        eer = far[last_nonnegative] + fraction * (far[after] - far[last_nonnegative])
    return float(eer), float(thresholds[np.argmin(np.abs(gap))])


def tar_at_far(
    scores: ArrayLike | Tensor, same: ArrayLike | Tensor, far: float | Sequence[float]
) -> float | np.ndarray:
    """Highest true accept rate among operating points whose false accept rate is <= ``far``.

    A scalar ``far`` gives a float; a sequence gives an array of the same length.
    """
    targets = np.asarray(far, dtype=np.float64)
    if targets.ndim > 1 or not ((targets >= 0.0) & (targets <= 1.0)).all():
        raise ValueError(f"far must be a rate in [0, 1] or a sequence of them, got {far!r}")
    curve_far, curve_tar, _ = roc_curve(scores, same)
    # curve_far is non-decreasing and starts at 0, so every target has at least one point.
    last_allowed = np.searchsorted(curve_far, targets, side="right") - 1
    result = curve_tar[last_allowed]
    return float(result) if targets.ndim == 0 else result


def verification_accuracy(
    scores: ArrayLike | Tensor, same: ArrayLike | Tensor, threshold: float
) -> float:
    """Fraction of pairs classified correctly when ``score >= threshold`` means "same"."""
    score_array, same_array = _check_scores(scores, same)
    return float(np.mean((score_array >= threshold) == same_array))


def choose_threshold(
    scores: ArrayLike | Tensor, same: ArrayLike | Tensor, criterion: str = "eer"
) -> float:
    """Pick a decision threshold on validation pairs, to apply unchanged to test pairs.

    ``"eer"``: the operating point nearest the equal error rate. ``"accuracy"``: the operating
    point with the highest verification accuracy (the highest such threshold on ties). The
    threshold is one of the validation scores (or ``inf``, rejecting everything).
    """
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(
            f"unknown criterion {criterion!r}; expected one of {', '.join(THRESHOLD_CRITERIA)}"
        )
    if criterion == "eer":
        return equal_error_rate(scores, same)[1]
    far, tar, thresholds = roc_curve(scores, same)
    same_array = _check_scores(scores, same)[1]
    n_same = same_array.sum()
    n_different = same_array.size - n_same
    accuracy = (tar * n_same + (1.0 - far) * n_different) / same_array.size
    return float(thresholds[np.argmax(accuracy)])


def balanced_pairs(labels: ArrayLike, count: int, rng: np.random.Generator, *, fill: bool = True) -> np.ndarray:
    """``[pairs, 2]`` item pairs for verification: ``count // 2`` same-class pairs (an item of a class with
    at least 2 items and another item of its class), then different-class pairs. With ``fill``, different-class
    pairs are drawn until ``count - count // 2`` are found (exactly ``count`` pairs); without it, from one draw
    of ``count - count // 2`` candidate pairs, keeping those of two classes (fewer; the evaluator's embedding
    metrics are measured that way, so its numbers stay comparable)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts[labels] >= 2)
    if len(eligible) == 0 or np.count_nonzero(counts) < 2:
        raise ValueError(f"balanced pairs need at least 2 classes and a class with 2 items; got "
                         f"{np.count_nonzero(counts)} class(es) of {len(labels)} items")
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(labels)) - starts[labels[order]]
    anchor = eligible[rng.integers(0, len(eligible), count // 2)]
    size = counts[labels[anchor]]
    partner = order[starts[labels[anchor]] + (rank[anchor] + rng.integers(1, size)) % size]
    first_parts, second_parts, needed = [], [], count - count // 2
    if not fill:
        first, second = rng.integers(0, len(labels), (2, needed))
        keep = labels[first] != labels[second]
        first_parts, second_parts, needed = [first[keep]], [second[keep]], 0
    while needed > 0:
        first, second = rng.integers(0, len(labels), (2, 2 * needed + 16))
        keep = labels[first] != labels[second]
        first_parts.append(first[keep][:needed])
        second_parts.append(second[keep][:needed])
        needed -= len(first_parts[-1])
    return np.stack([np.concatenate([anchor, *first_parts]), np.concatenate([partner, *second_parts])], axis=1)
