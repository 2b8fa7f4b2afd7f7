"""Episode statistics: confidence intervals over per-episode accuracies, paired comparisons of two models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import stats
from torch import Tensor

"""Pairwise distance: ``(x[m, d], y[n, d]) -> [m, n]``, smaller means closer. Distances may also be
named: names are those of ``fewshot.distances.DISTANCES``, so a trained model's distance module or
its name gives the same numbers here as in training. The default is the plain Euclidean distance."""
CI_METHODS = ("normal", "t", "bootstrap", "bca")


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


def to_numpy(values: ArrayLike | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def as_finite_vector(values: ArrayLike | Tensor, name: str) -> np.ndarray:
    array = to_numpy(values).astype(np.float64)
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
    array = as_finite_vector(values, "values")
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
    a_array = as_finite_vector(a, "a")
    b_array = as_finite_vector(b, "b")
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
