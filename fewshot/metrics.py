"""Evaluation statistics and embedding metrics.

Three groups of pure functions:

- Episode statistics: :func:`confidence_interval` over per-episode accuracies,
  :func:`paired_comparison` of two models on identical episodes, :func:`episode_accuracy`.
- Verification (same / different class pairs): :func:`pair_scores`, :func:`roc_curve`,
  :func:`roc_auc`, :func:`equal_error_rate`, :func:`tar_at_far`, :func:`choose_threshold`,
  :func:`verification_accuracy`.
- Leave-one-out retrieval: :func:`recall_at_k`, :func:`r_precision`, :func:`map_at_r` (Musgrave,
  Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020).
- Clustering: :func:`kmeans_clusters` and :func:`clustering_scores` (NMI and AMI of k-means
  clusters against the classes; scikit-learn, imported when called).

Scores are similarities: higher means "more likely the same class", and a pair is accepted as
same-class when ``score >= threshold``. Distances follow the opposite convention (smaller is
closer); :func:`pair_scores` returns ``-distance``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from scipy import integrate, stats
from torch import Tensor

from fewshot.distances import build_distance

DistanceFn = Callable[[Tensor, Tensor], Tensor]
"""Pairwise distance: ``(x[m, d], y[n, d]) -> [m, n]``, smaller means closer. Distances may also be
named: names are those of ``fewshot.distances.DISTANCES``, so a trained model's distance module or
its name gives the same numbers here as in training. The default is the plain Euclidean distance."""

Distance = Union[str, DistanceFn]

CI_METHODS = ("normal", "t", "bootstrap", "bca")
THRESHOLD_CRITERIA = ("eer", "accuracy")


# --------------------------------------------------------------------------------------------
# Episode statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A confidence interval for the mean of ``n`` values.

    ``half_width`` is ``(high - low) / 2``; it is exactly the "±" of the normal and t
    intervals, and a summary of the (possibly asymmetric) bootstrap intervals.
    """

    mean: float
    half_width: float
    low: float
    high: float
    method: str
    n: int
    confidence: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the closed interval ``[low, high]``."""
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return (
            f"{self.mean:.4f} ± {self.half_width:.4f} "
            f"({self.confidence:.0%} {self.method}, n={self.n})"
        )


@dataclass(frozen=True)
class PairedResult:
    """Comparison of two models on identical episodes, differences taken as ``a - b``."""

    difference: Interval
    """Student-t interval of the mean per-episode difference."""
    t_statistic: float
    p_value: float
    """Two-sided paired t-test p-value."""
    wilcoxon_p_value: float
    """Two-sided Wilcoxon signed-rank p-value (zero differences ranked, Pratt's method)."""

    @property
    def mean_difference(self) -> float:
        """Mean of ``a - b`` over episodes."""
        return self.difference.mean

    @property
    def n(self) -> int:
        """Number of paired episodes."""
        return self.difference.n


def _to_numpy(values: ArrayLike | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _as_finite_vector(values: ArrayLike | Tensor, name: str) -> np.ndarray:
    array = _to_numpy(values).astype(np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} must be finite, got {bad.size} non-finite value(s), first {array[bad[0]]} "
            f"at index {bad[0]}"
        )
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def confidence_interval(
    values: ArrayLike | Tensor,
    method: str = "normal",
    confidence: float = 0.95,
    *,
    n_boot: int = 10000,
    seed: int = 0,
) -> Interval:
    """Confidence interval for the mean of per-episode values (e.g. accuracies).

    Methods:

    - ``"normal"``: ``mean ± z * s / sqrt(n)`` with ``z = norm.ppf((1 + confidence) / 2)``
      (1.96 at 95%) and ``s`` the sample standard deviation (``ddof=1``), the "± 95% CI"
      reported by few-shot papers (Snell et al.'s code uses torchnet's unbiased std).
    - ``"t"``: the same with the Student-t quantile on ``n - 1`` degrees of freedom.
    - ``"bootstrap"``: percentile bootstrap of the mean, ``n_boot`` resamples (scipy).
    - ``"bca"``: bias-corrected and accelerated bootstrap of the mean (scipy).

    Bootstrap intervals are seeded by ``seed``, so equal inputs give equal intervals. Values
    that are all equal give the zero-width interval ``[mean, mean]`` for every method.
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(CI_METHODS)}")
    _check_confidence(confidence)
    array = _as_finite_vector(values, "values")
    n = array.size
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    mean = float(array.mean())
    if np.ptp(array) == 0.0:
        return Interval(mean, 0.0, mean, mean, method, n, confidence)

    if method in ("normal", "t"):
        standard_error = float(array.std(ddof=1) / np.sqrt(n))
        upper_tail = 0.5 + confidence / 2.0
        if method == "normal":
            quantile = float(stats.norm.ppf(upper_tail))
        else:
            quantile = float(stats.t.ppf(upper_tail, df=n - 1))
        half_width = quantile * standard_error
        return Interval(mean, half_width, mean - half_width, mean + half_width, method, n,
                        confidence)

    if n_boot < 1:
        raise ValueError(f"n_boot must be a positive number of resamples, got {n_boot}")
    result = stats.bootstrap(
        (array,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=confidence,
        method="percentile" if method == "bootstrap" else "BCa",
        rng=np.random.default_rng(seed),
    )
    low = float(result.confidence_interval.low)
    high = float(result.confidence_interval.high)
    return Interval(mean, (high - low) / 2.0, low, high, method, n, confidence)


def paired_comparison(
    a: ArrayLike | Tensor, b: ArrayLike | Tensor, confidence: float = 0.95
) -> PairedResult:
    """Compare per-episode values of two models evaluated on the SAME episodes.

    Returns the t interval of the mean difference ``a - b``, the paired t-test and the
    Wilcoxon signed-rank p-values (both two-sided). When every difference is zero, both
    p-values are 1.0 and the interval has zero width; when every difference is the same
    non-zero constant, the t-test p-value is 0.0 (infinite t statistic).
    """
    a_array = _as_finite_vector(a, "a")
    b_array = _as_finite_vector(b, "b")
    if a_array.size != b_array.size:
        raise ValueError(
            f"paired comparison needs one value per episode from each model, got "
            f"len(a)={a_array.size} and len(b)={b_array.size}"
        )
    differences = a_array - b_array
    interval = confidence_interval(differences, "t", confidence)

    if np.ptp(differences) == 0.0:
        # scipy returns NaN for zero-variance differences; the limits are well defined.
        constant = float(differences[0])
        if constant == 0.0:
            return PairedResult(interval, 0.0, 1.0, 1.0)
        t_statistic, p_value = float(np.copysign(np.inf, constant)), 0.0
    else:
        t_test = stats.ttest_rel(a_array, b_array)
        t_statistic, p_value = float(t_test.statistic), float(t_test.pvalue)
    # Pratt's method ranks zero differences instead of discarding them: ties between models
    # are common on easy episodes and are evidence of "no difference".
    wilcoxon_p_value = float(stats.wilcoxon(differences, zero_method="pratt").pvalue)
    return PairedResult(interval, t_statistic, p_value, wilcoxon_p_value)


def episode_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of queries whose arg-max logit is the true label.

    ``logits`` is ``[..., ways]`` and ``labels`` (integers in ``[0, ways)``) has the shape
    ``logits.shape[:-1]``.
    """
    if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels must have shape logits.shape[:-1]; got logits {tuple(logits.shape)} and "
            f"labels {tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError("episode_accuracy needs at least one query, got none")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    ways = logits.shape[-1]
    if labels.min() < 0 or labels.max() >= ways:
        raise ValueError(
            f"labels must lie in [0, {ways}) for {ways}-way logits, got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return (logits.argmax(dim=-1) == labels).float().mean().item()


# --------------------------------------------------------------------------------------------
# Distances between embeddings
# --------------------------------------------------------------------------------------------


def _resolve_distance(distance: Distance, dim: int) -> DistanceFn:
    """A callable as it is; a name built from the distance registry that training uses (one vocabulary:
    "euclidean" is the squared Euclidean distance here as in Prototypical Networks)."""
    if callable(distance):
        return distance
    return build_distance(distance, dim)


def _pairwise(distance_fn: DistanceFn, x: Tensor, y: Tensor) -> Tensor:
    result = distance_fn(x, y)
    if result.shape != (x.shape[0], y.shape[0]):
        raise ValueError(
            f"distance function must return a [{x.shape[0]}, {y.shape[0]}] matrix, got "
            f"{tuple(result.shape)}"
        )
    return result


def _check_embeddings(embeddings: Tensor | ArrayLike, labels: Tensor | ArrayLike) -> tuple[
    Tensor, Tensor
]:
    embeddings = torch.as_tensor(embeddings).detach()
    labels = torch.as_tensor(labels).detach().cpu()
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {tuple(embeddings.shape)}")
    if not embeddings.dtype.is_floating_point:
        embeddings = embeddings.float()
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"labels must be [n] with n={embeddings.shape[0]} embeddings, got shape "
            f"{tuple(labels.shape)}"
        )
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain non-finite values (NaN or inf)")
    if embeddings.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings, got {embeddings.shape[0]}")
    return embeddings, labels


# --------------------------------------------------------------------------------------------
# Verification: same / different class pairs
# --------------------------------------------------------------------------------------------


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
    embeddings, labels = _check_embeddings(embeddings, labels)
    distance_fn = _resolve_distance(distance, embeddings.shape[1])
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
                block = _pairwise(distance_fn, embeddings[rows], embeddings).cpu()
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
                block = _pairwise(distance_fn, embeddings[first], embeddings[second])
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
    score_array = _as_finite_vector(scores, "scores")
    same_array = _to_numpy(same)
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


# --------------------------------------------------------------------------------------------
# Leave-one-out retrieval
# --------------------------------------------------------------------------------------------


def _check_retrieval_classes(labels: Tensor) -> Tensor:
    """Per-item count of OTHER items of the same class (R in MAP@R)."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    singletons = classes[counts == 1]
    if singletons.numel():
        shown = ", ".join(str(c) for c in singletons[:10].tolist())
        more = f" and {singletons.numel() - 10} more" if singletons.numel() > 10 else ""
        raise ValueError(
            f"leave-one-out retrieval needs at least 2 items per class; classes with a single "
            f"item: {shown}{more}"
        )
    return counts[inverse] - 1


def _neighbour_chunks(
    embeddings: Tensor, k: int, distance: Distance, chunk_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(query indices, their k nearest other items)``, nearest first, chunk by chunk.

    Items at exactly equal distance are ordered as ``torch.topk`` returns them (unspecified);
    this only matters for duplicated embeddings.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    distance_fn = _resolve_distance(distance, embeddings.shape[1])
    n = embeddings.shape[0]
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            queries = torch.arange(start, min(start + chunk_size, n))
            block = _pairwise(distance_fn, embeddings[queries], embeddings).cpu()
            block[torch.arange(queries.numel()), queries] = torch.inf  # leave the query out
            yield queries, torch.topk(block, k, dim=1, largest=False, sorted=True).indices


def recall_at_k(
    embeddings: Tensor,
    labels: Tensor,
    k: int = 1,
    distance: Distance = torch.cdist,
    *,
    chunk_size: int = 1024,
) -> float:
    """Fraction of items with at least one same-class item among their ``k`` nearest others.

    Leave-one-out over the whole set (each item queries all the others), computed
    ``chunk_size`` queries at a time. Every class needs at least 2 items.
    """
    embeddings, labels = _check_embeddings(embeddings, labels)
    n = embeddings.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} embeddings, got {k}")
    _check_retrieval_classes(labels)
    hits = 0
    for queries, neighbours in _neighbour_chunks(embeddings, k, distance, chunk_size):
        hits += int((labels[neighbours] == labels[queries][:, None]).any(dim=1).sum())
    return hits / n


def _relevance_at_r(
    embeddings: Tensor, labels: Tensor, distance: Distance, chunk_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Per chunk of queries: ``R`` (other items of the query's class), whether each of its ``max R``
    nearest other items is relevant (same class, within its first ``R``), and the ranks ``1..max R``."""
    embeddings, labels = _check_embeddings(embeddings, labels)
    relevant_counts = _check_retrieval_classes(labels)
    max_r = int(relevant_counts.max())
    ranks = torch.arange(1, max_r + 1)
    for queries, neighbours in _neighbour_chunks(embeddings, max_r, distance, chunk_size):
        r = relevant_counts[queries]
        yield r, (labels[neighbours] == labels[queries][:, None]) & (ranks[None, :] <= r[:, None]), ranks


def map_at_r(
    embeddings: Tensor,
    labels: Tensor,
    distance: Distance = torch.cdist,
    *,
    chunk_size: int = 1024,
) -> float:
    """Mean average precision at R (Musgrave, Belongie & Lim, ECCV 2020), leave-one-out.

    For each query, R is the number of other items of its class, and
    ``AP@R = (1 / R) * sum_{i=1..R} P(i) * rel(i)`` where ``rel(i)`` says whether the i-th
    nearest other item shares the query's class and ``P(i)`` is the precision among the first
    i. MAP@R is the mean over all queries. Every class needs at least 2 items.
    """
    total = 0.0
    for r, relevant, ranks in _relevance_at_r(embeddings, labels, distance, chunk_size):
        precision = relevant.cumsum(dim=1) / ranks
        total += float(((precision * relevant).sum(dim=1) / r).sum())
    return total / len(labels)


def r_precision(
    embeddings: Tensor,
    labels: Tensor,
    distance: Distance = torch.cdist,
    *,
    chunk_size: int = 1024,
) -> float:
    """R-precision (Musgrave, Belongie & Lim, ECCV 2020), leave-one-out: for each query, R is the
    number of other items of its class and the score is the fraction of its R nearest other items
    that share its class; the mean over all queries. Every class needs at least 2 items.
    """
    total = 0.0
    for r, relevant, _ in _relevance_at_r(embeddings, labels, distance, chunk_size):
        total += float((relevant.sum(dim=1) / r).sum())
    return total / len(labels)


# --------------------------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusteringScores:
    """Agreement of a clustering with the classes: normalised and adjusted mutual information."""

    nmi: float
    """Normalised mutual information, ``I(Y; C) / ((H(Y) + H(C)) / 2)``: 1 for the classes
    themselves (up to renaming), 0 for a clustering independent of them."""
    ami: float
    """Adjusted mutual information: NMI corrected for chance, ``(I - E[I]) / (mean(H) - E[I])``,
    about 0 for a random clustering with the same cluster sizes, 1 for the classes."""
    clusters: int
    """Number of distinct clusters."""


def _check_assignments(values: ArrayLike | Tensor, name: str) -> np.ndarray:
    array = _to_numpy(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}")
    return array.astype(np.int64)


def clustering_scores(labels: ArrayLike | Tensor, clusters: ArrayLike | Tensor) -> ClusteringScores:
    """NMI and AMI of cluster ids ``clusters`` against class ids ``labels`` (one of each per item).

    NMI uses the arithmetic mean of the two entropies (scikit-learn's default, and the NMI of
    the deep metric learning literature); AMI uses the same mean and the expected mutual
    information under random clusterings of the same sizes. Both are symmetric and ignore how
    clusters and classes are numbered.
    """
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    label_array = _check_assignments(labels, "labels")
    cluster_array = _check_assignments(clusters, "clusters")
    if label_array.shape != cluster_array.shape:
        raise ValueError(
            f"labels and clusters need one entry per item, got {label_array.size} labels and "
            f"{cluster_array.size} clusters"
        )
    return ClusteringScores(
        nmi=float(normalized_mutual_info_score(label_array, cluster_array)),
        ami=float(adjusted_mutual_info_score(label_array, cluster_array)),
        clusters=int(np.unique(cluster_array).size),
    )


def kmeans_clusters(
    embeddings: Tensor | ArrayLike, k: int, *, seed: int = 0, normalize: bool = False
) -> np.ndarray:
    """Cluster ids ``[n]`` of Euclidean k-means on the embeddings ``[n, d]`` (scikit-learn's
    ``KMeans``: k-means++ initialisation, one run, seeded), so the same embeddings and seed give
    the same clusters. ``normalize`` L2-normalises the rows first, the consistent choice for
    embeddings compared by cosine (Euclidean distance between unit vectors is monotone in it).
    """
    from sklearn.cluster import KMeans

    array = torch.as_tensor(embeddings).detach().cpu().double()
    if array.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {tuple(array.shape)}")
    if not torch.isfinite(array).all():
        raise ValueError("embeddings contain non-finite values (NaN or inf)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= array.shape[0]:
        raise ValueError(f"k must be an int in [1, {array.shape[0]}] for {array.shape[0]} embeddings, got {k!r}")
    if normalize:
        array = F.normalize(array, dim=1)
    # One k-means++ start: each start is a full k-means run (with k in the thousands for Omniglot's
    # test classes, ten starts would cost ten times as long), and the seed makes the one start repeatable.
    model = KMeans(n_clusters=int(k), n_init=1, random_state=seed)
    return model.fit_predict(array.numpy()).astype(np.int64)
