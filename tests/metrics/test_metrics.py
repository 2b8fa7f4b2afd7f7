"""Tests for fewshot.metrics: intervals, paired comparison, verification and retrieval metrics."""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.metrics.statistics import Interval, confidence_interval, episode_accuracy, paired_comparison
from fewshot.metrics.verification import (
    choose_threshold,
    equal_error_rate,
    pair_scores,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_accuracy,
)
from fewshot.metrics.retrieval import map_at_r, recall_at_k

# ----------------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------------

# Hand computation for accuracies [0.8, 0.9, 1.0, 0.7]:
#   mean = 3.4 / 4 = 0.85
#   deviations -0.05, 0.05, 0.15, -0.15 -> squares sum to 0.05 -> sample variance 0.05 / 3
#   std (ddof=1) = sqrt(0.0166667) = 0.1290994, standard error = 0.1290994 / sqrt(4) = 0.0645497
#   normal: 1.959964 * 0.0645497 = 0.1265151      t (3 dof): 3.182446 * 0.0645497 = 0.2054260
ACCURACIES = [0.8, 0.9, 1.0, 0.7]


def test_normal_interval_matches_hand_computation() -> None:
    interval = confidence_interval(ACCURACIES)
    assert interval.method == "normal" and interval.n == 4 and interval.confidence == 0.95
    assert interval.mean == pytest.approx(0.85)
    assert interval.half_width == pytest.approx(0.1265151, abs=1e-7)
    assert (interval.low, interval.high) == pytest.approx((0.85 - 0.1265151, 0.85 + 0.1265151))
    assert "0.8500 ± 0.1265" in str(interval)
    assert isinstance(interval, Interval)
    with pytest.raises(AttributeError):
        interval.mean = 0.0  # frozen: results cannot be edited after the fact


def test_t_interval_matches_hand_computation_and_is_wider_for_small_n() -> None:
    t_interval = confidence_interval(ACCURACIES, "t")
    assert t_interval.half_width == pytest.approx(0.2054260, abs=1e-7)
    assert t_interval.half_width > confidence_interval(ACCURACIES, "normal").half_width
    # With many episodes the t quantile tends to the normal one.
    many = np.random.default_rng(1).uniform(0.5, 1.0, size=5000)
    ratio = confidence_interval(many, "t").half_width / confidence_interval(many).half_width
    assert 1.0 < ratio < 1.001


def test_other_confidence_levels_use_the_matching_quantile() -> None:
    interval = confidence_interval(ACCURACIES, confidence=0.99)
    assert interval.half_width == pytest.approx(2.5758293 * 0.0645497, abs=1e-7)


@pytest.mark.parametrize("method", ["bootstrap", "bca"])
def test_bootstrap_interval_contains_the_mean_and_is_seeded(method: str) -> None:
    values = np.random.default_rng(2).uniform(0.4, 1.0, size=60)
    first = confidence_interval(values, method, seed=7)
    assert first.low < first.mean < first.high
    assert first.half_width == pytest.approx((first.high - first.low) / 2)
    assert confidence_interval(values, method, seed=7) == first
    assert confidence_interval(values, method, seed=8) != first
    # For a mean of 60 values the bootstrap agrees with the normal interval to within ~15%.
    normal = confidence_interval(values)
    assert first.half_width == pytest.approx(normal.half_width, rel=0.15)


@pytest.mark.parametrize("method", ["normal", "t", "bootstrap", "bca"])
def test_constant_values_give_a_zero_width_interval(method: str) -> None:
    interval = confidence_interval([1.0] * 10, method)
    assert (interval.mean, interval.half_width, interval.low, interval.high) == (1.0, 0.0, 1.0, 1.0)


def test_interval_accepts_tensors() -> None:
    as_tensor = torch.tensor(ACCURACIES, dtype=torch.float64)
    assert confidence_interval(as_tensor) == confidence_interval(ACCURACIES)


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        ([0.5], {}, "at least 2 values, got 1"),
        ([], {}, "at least 2 values, got 0"),
        (ACCURACIES, {"method": "wald"}, "unknown method 'wald'; expected one of normal, t, "),
        ([0.5, float("nan"), 0.7], {}, "non-finite value.*index 1"),
        ([0.5, float("inf")], {}, "non-finite"),
        ([[0.5, 0.6]], {}, r"1-D .* shape \(1, 2\)"),
        (ACCURACIES, {"confidence": 95}, r"confidence must be in \(0, 1\), got 95"),
    ],
)
def test_confidence_interval_rejects_bad_input(values, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        confidence_interval(values, **kwargs)


# ----------------------------------------------------------------------------------------------
# Paired comparison
# ----------------------------------------------------------------------------------------------


def test_paired_comparison_of_a_vector_with_itself() -> None:
    accuracies = np.random.default_rng(3).uniform(0.6, 1.0, size=100)
    result = paired_comparison(accuracies, accuracies)
    assert result.mean_difference == 0.0 and result.n == 100
    assert result.difference.half_width == 0.0
    assert result.p_value == 1.0 and result.wilcoxon_p_value == 1.0
    assert result.t_statistic == 0.0


def test_paired_comparison_detects_a_known_shift() -> None:
    rng = np.random.default_rng(4)
    baseline = rng.uniform(0.5, 0.9, size=600)
    improved = baseline + 0.03 + rng.normal(0.0, 0.02, size=600)
    result = paired_comparison(improved, baseline)
    differences = improved - baseline
    assert result.mean_difference == pytest.approx(differences.mean())
    assert result.difference.contains(0.03)
    assert result.difference.method == "t"
    # t = 0.03 / (0.02 / sqrt(600)) ~ 37: both tests reject overwhelmingly.
    assert result.t_statistic > 30
    assert result.p_value < 1e-100 and result.wilcoxon_p_value < 1e-50
    # Swapping the models flips the sign and keeps the p-values.
    swapped = paired_comparison(baseline, improved)
    assert swapped.mean_difference == pytest.approx(-result.mean_difference)
    assert swapped.p_value == pytest.approx(result.p_value)


def test_pairing_detects_what_overlapping_unpaired_intervals_hide() -> None:
    # Episode difficulty varies a lot (sd 0.1) and is shared by both models; the second model
    # is better by 0.01 on every episode up to small noise.
    rng = np.random.default_rng(11)
    difficulty = rng.normal(0.7, 0.1, size=600)
    model_a = difficulty + 0.01 + rng.normal(0.0, 0.01, size=600)
    model_b = difficulty + rng.normal(0.0, 0.01, size=600)
    interval_a, interval_b = confidence_interval(model_a), confidence_interval(model_b)
    assert interval_a.low < interval_b.high  # the separate intervals overlap
    result = paired_comparison(model_a, model_b)
    assert result.difference.low > 0.0 and result.p_value < 1e-20


def test_paired_comparison_rejects_at_the_nominal_rate_without_a_difference() -> None:
    # Under no difference a single evaluation still "rejects" 5% of the time, so check the
    # rate over 200 independent evaluations (binomial sd 1.5 points) rather than one seed.
    rng = np.random.default_rng(5)
    rejections = {"t": 0, "wilcoxon": 0, "interval": 0}
    for _ in range(200):
        noise_a, noise_b = rng.normal(0.8, 0.05, size=(2, 100))
        result = paired_comparison(noise_a, noise_b)
        rejections["t"] += result.p_value < 0.05
        rejections["wilcoxon"] += result.wilcoxon_p_value < 0.05
        rejections["interval"] += not result.difference.contains(0.0)
    assert rejections["t"] == rejections["interval"]  # the t interval and t-test agree
    for count in rejections.values():
        assert 0.01 <= count / 200 <= 0.10


def test_paired_comparison_with_a_constant_nonzero_difference() -> None:
    b = np.array([0.5, 0.75, 0.25, 1.0, 0.5, 0.0])
    result = paired_comparison(b + 0.5, b)  # exact in binary floating point
    assert result.mean_difference == 0.5 and result.difference.half_width == 0.0
    assert result.t_statistic == math.inf and result.p_value == 0.0
    assert result.wilcoxon_p_value == pytest.approx(2 / 2**6)  # exact: all 6 signs positive


def test_paired_comparison_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"len\(a\)=3 and len\(b\)=2"):
        paired_comparison([0.1, 0.2, 0.3], [0.1, 0.2])


# ----------------------------------------------------------------------------------------------
# Episode accuracy, and chance level of a model with random embeddings
# ----------------------------------------------------------------------------------------------


def test_episode_accuracy_hand_example() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 2])  # last two are wrong
    assert episode_accuracy(logits, labels) == 0.5


def test_episode_accuracy_rejects_bad_input() -> None:
    logits = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"shape logits.shape\[:-1\]"):
        episode_accuracy(logits, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\).*\[0, 3\]"):
        episode_accuracy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        episode_accuracy(logits, torch.zeros(4))


def random_embedding_episode_accuracies(
    generator: torch.Generator, episodes: int, ways: int = 5, shots: int = 1, queries: int = 15,
    dim: int = 8, class_shift: float = 0.0,
) -> torch.Tensor:
    """Nearest-prototype accuracies of a model whose embeddings are Gaussian noise.

    ``class_shift`` > 0 adds a class-dependent mean, i.e. a model with real signal.
    """
    embeddings = torch.randn(episodes, ways, shots + queries, dim, generator=generator)
    class_means = torch.randn(episodes, ways, 1, dim, generator=generator)
    embeddings = embeddings + class_shift * class_means
    prototypes = embeddings[:, :, :shots].mean(dim=2)
    query_embeddings = embeddings[:, :, shots:].reshape(episodes, ways * queries, dim)
    logits = -torch.cdist(query_embeddings, prototypes)
    labels = torch.arange(ways).repeat_interleave(queries)
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1)


def test_random_embeddings_score_chance_within_the_interval() -> None:
    generator = torch.Generator().manual_seed(0)
    episodes = torch.randn(600, 5, 16, 16, generator=generator)  # 5-way 1-shot 15-query
    labels = torch.arange(5).repeat_interleave(15)
    accuracies = []
    for episode in episodes:
        prototypes = episode[:, :1].mean(dim=1)
        logits = -torch.cdist(episode[:, 1:].reshape(75, 16), prototypes)
        accuracies.append(episode_accuracy(logits, labels))
    for method in ("normal", "t", "bootstrap"):
        interval = confidence_interval(accuracies, method)
        assert interval.contains(0.2), interval
        assert interval.half_width < 0.01  # 600 episodes pin chance down to about ±0.004


def test_chance_interval_coverage_is_close_to_nominal() -> None:
    """The single-seed check above is valid for any seed: over 200 independent evaluations of
    600 episodes each, the 95% normal interval covers chance (0.2) about 95% of the time
    (binomial sd 1.5 points), and a model with real signal is never mistaken for chance."""
    generator = torch.Generator().manual_seed(1)
    covered = 0
    for _ in range(200):
        accuracies = random_embedding_episode_accuracies(generator, episodes=600)
        covered += confidence_interval(accuracies).contains(0.2)
    assert 0.90 <= covered / 200 <= 0.99

    signal = random_embedding_episode_accuracies(generator, episodes=600, class_shift=1.0)
    assert confidence_interval(signal).low > 0.3


# ----------------------------------------------------------------------------------------------
# Verification metrics
# ----------------------------------------------------------------------------------------------


def brute_force_auc(scores: np.ndarray, same: np.ndarray) -> float:
    positives, negatives = scores[same][:, None], scores[~same][None, :]
    return float(np.mean((positives > negatives) + 0.5 * (positives == negatives)))


def brute_force_roc(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.r_[np.inf, np.sort(np.unique(scores))[::-1]]
    far = np.array([np.mean(scores[~same] >= t) for t in thresholds])
    tar = np.array([np.mean(scores[same] >= t) for t in thresholds])
    return far, tar


def test_perfect_separation() -> None:
    scores, same = np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, True, False, False])
    assert roc_auc(scores, same) == 1.0
    assert equal_error_rate(scores, same) == (0.0, 0.8)
    assert tar_at_far(scores, same, 0.0) == 1.0
    assert verification_accuracy(scores, same, 0.8) == 1.0


def test_reversed_scores() -> None:
    scores, same = np.array([0.9, 0.8, 0.3, 0.1]), np.array([False, False, True, True])
    assert roc_auc(scores, same) == 0.0
    assert equal_error_rate(scores, same)[0] == 1.0
    assert list(tar_at_far(scores, same, [0.0, 0.99, 1.0])) == [0.0, 0.0, 1.0]


def test_all_tied_scores_are_chance() -> None:
    scores, same = np.ones(6), np.array([True, False] * 3)
    far, tar, thresholds = roc_curve(scores, same)
    assert list(far) == [0.0, 1.0] and list(tar) == [0.0, 1.0]
    assert list(thresholds) == [math.inf, 1.0]
    assert roc_auc(scores, same) == 0.5
    assert equal_error_rate(scores, same)[0] == 0.5


def test_partial_ties_count_half() -> None:
    # Same-pair scores [2, 1], different-pair scores [1, 0]: of the 4 (same, different) pairs,
    # 3 are ordered correctly and 1 is tied -> AUC = 3.5 / 4.
    scores, same = np.array([2.0, 1.0, 1.0, 0.0]), np.array([True, True, False, False])
    assert roc_auc(scores, same) == 0.875


def test_equal_error_rate_hand_examples() -> None:
    # Same [0.9, 0.6, 0.4], different [0.7, 0.3, 0.2]. Accepting scores >= 0.6 accepts one
    # different pair (FAR 1/3) and rejects one same pair (FRR 1/3): an exact crossing.
    scores = np.array([0.9, 0.7, 0.6, 0.4, 0.3, 0.2])
    same = np.array([True, False, True, True, False, False])
    eer, threshold = equal_error_rate(scores, same)
    assert eer == pytest.approx(1 / 3) and threshold == 0.6
    # Same [2, 1, 1], different [1, 0]. ROC points (FAR, TAR): (0, 0), (0, 1/3) at 2,
    # (1/2, 1) at 1 (a tie of two same pairs and one different pair), (1, 1) at 0.
    # FRR - FAR goes from 2/3 to -1/2 between the 2nd and 3rd points: fraction (2/3)/(7/6) = 4/7
    # of the way, so EER = 0 + 4/7 * 1/2 = 2/7 (and FRR = 2/3 * (1 - 4/7) = 2/7 too).
    scores = np.array([2.0, 1.0, 1.0, 1.0, 0.0])
    same = np.array([True, True, True, False, False])
    eer, threshold = equal_error_rate(scores, same)
    assert eer == pytest.approx(2 / 7) and threshold == 1.0


def test_tar_at_far_hand_example() -> None:
    scores = np.array([0.9, 0.7, 0.6, 0.4, 0.3, 0.2])
    same = np.array([True, False, True, True, False, False])
    # FAR 0 allows only the threshold 0.9 (TAR 1/3); FAR 1/3 allows 0.4 (TAR 1).
    assert tar_at_far(scores, same, 0.0) == pytest.approx(1 / 3)
    assert tar_at_far(scores, same, 0.34) == 1.0
    result = tar_at_far(scores, same, [0.0, 0.2, 0.5])
    assert isinstance(result, np.ndarray) and result == pytest.approx([1 / 3, 1 / 3, 1.0])
    with pytest.raises(ValueError, match=r"rate in \[0, 1\].*1.5"):
        tar_at_far(scores, same, 1.5)


def test_roc_metrics_match_brute_force_on_random_scores_with_ties() -> None:
    rng = np.random.default_rng(6)
    same = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300) + same, 1)  # rounding creates many ties
    far, tar, thresholds = roc_curve(scores, same)
    brute_far, brute_tar = brute_force_roc(scores, same)
    assert far == pytest.approx(brute_far) and tar == pytest.approx(brute_tar)
    assert roc_auc(scores, same) == pytest.approx(brute_force_auc(scores, same))
    for target in (0.0, 0.01, 0.1, 0.5):
        best_allowed = brute_tar[brute_far <= target].max()
        assert tar_at_far(scores, same, target) == pytest.approx(best_allowed)
    eer, threshold = equal_error_rate(scores, same)
    gaps = np.abs((1 - brute_tar) - brute_far)
    assert threshold == thresholds[np.argmin(gaps)]
    # The interpolated EER lies between FAR and FRR of the chosen operating point.
    chosen = np.argmin(gaps)
    assert min(brute_far[chosen], 1 - brute_tar[chosen]) <= eer <= max(brute_far[chosen],
                                                                         1 - brute_tar[chosen])


def test_accuracy_threshold_is_the_best_on_validation_and_transfers_to_test() -> None:
    rng = np.random.default_rng(7)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        same = rng.random(n) < 0.5
        return rng.normal(size=n) + np.where(same, 1.0, -1.0), same

    val_scores, val_same = sample(2000)
    threshold = choose_threshold(val_scores, val_same, "accuracy")
    best_val = max(
        verification_accuracy(val_scores, val_same, t) for t in np.r_[np.inf, val_scores]
    )
    assert verification_accuracy(val_scores, val_same, threshold) == best_val
    # Bayes-optimal threshold is 0 with accuracy Phi(1) = 0.8413; the validation threshold
    # generalises to fresh test pairs.
    assert abs(threshold) < 0.2
    test_scores, test_same = sample(20000)
    test_accuracy = verification_accuracy(test_scores, test_same, threshold)
    assert test_accuracy == pytest.approx(0.8413, abs=0.01)
    eer_threshold = choose_threshold(val_scores, val_same, "eer")
    assert eer_threshold == equal_error_rate(val_scores, val_same)[1] and abs(eer_threshold) < 0.2
    with pytest.raises(ValueError, match="unknown criterion 'f1'; expected one of eer, accuracy"):
        choose_threshold(val_scores, val_same, "f1")


def test_verification_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="1 same and 0 different"):
        roc_auc([0.5], [True])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0.5, 0.2], [True])
    with pytest.raises(ValueError, match="booleans"):
        roc_auc([0.5, 0.2], [2, 0])
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc([0.5, float("nan")], [True, False])


def test_pair_scores_all_pairs() -> None:
    generator = torch.Generator().manual_seed(8)
    embeddings = torch.randn(37, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (37,), generator=generator)
    scores, same = pair_scores(embeddings, labels, chunk_size=6)  # chunks split the rows
    rows, columns = np.triu_indices(37, 1)
    expected = -torch.cdist(embeddings, embeddings).numpy()[rows, columns]
    assert scores.dtype == np.float64 and same.dtype == bool
    assert scores == pytest.approx(expected)
    assert np.array_equal(same, labels.numpy()[rows] == labels.numpy()[columns])

    # Named distances are the training registry's: "cosine" is -scale * cos (scale 10 at initialisation).
    cosine_scores, _ = pair_scores(embeddings, labels, "cosine")
    normalised = torch.nn.functional.normalize(embeddings, dim=1).numpy()
    assert cosine_scores == pytest.approx(10.0 * (normalised @ normalised.T)[rows, columns])

    def manhattan(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x, y, p=1.0)

    manhattan_scores, _ = pair_scores(embeddings, labels, manhattan)
    assert manhattan_scores == pytest.approx(-torch.cdist(embeddings, embeddings, p=1.0).numpy()[
        rows, columns])


def test_pair_scores_given_pairs() -> None:
    embeddings = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    labels = torch.tensor([7, 7, 9])
    scores, same = pair_scores(embeddings, labels, pairs=[[0, 1], [2, 0], [1, 2]], chunk_size=2)
    assert scores == pytest.approx([-5.0, -1.0, -math.sqrt(18.0)])
    assert list(same) == [True, False, False]
    with pytest.raises(ValueError, match=r"\[0, 3\).*\[0, 3\]"):
        pair_scores(embeddings, labels, pairs=[[0, 3]])
    with pytest.raises(ValueError, match=r"integer \[p, 2\]"):
        pair_scores(embeddings, labels, pairs=[0, 1])
    with pytest.raises(ValueError, match="unknown distance 'hamming'"):
        pair_scores(embeddings, labels, "hamming")
    with pytest.raises(ValueError, match=r"labels must be \[n\] with n=3"):
        pair_scores(embeddings, labels[:2])


# ----------------------------------------------------------------------------------------------
# Retrieval metrics
# ----------------------------------------------------------------------------------------------

# 1-D hand example, no tied distances: positions and classes
#   x:     0   1   3   7   12  20
#   class: A   A   B   A   B   B        (R = 2 for every query)
# Two nearest other items per query, relevance, AP@R = (1/R) * sum P(i) rel(i):
#   0  -> 1(A), 3(B)   [1, 0]  AP = (1/2)(1)      = 0.5
#   1  -> 0(A), 3(B)   [1, 0]  AP = 0.5
#   3  -> 1(A), 0(A)   [0, 0]  AP = 0
#   7  -> 3(B), 12(B)  [0, 0]  AP = 0
#   12 -> 7(A), 20(B)  [0, 1]  AP = (1/2)(1/2)    = 0.25
#   20 -> 12(B), 7(A)  [1, 0]  AP = 0.5
#   MAP@R = 1.75 / 6;  Recall@1 = 3/6 (queries 0, 1, 20); Recall@2 adds 12; Recall@3 adds 7
#   (its 3rd neighbour is 1, class A).
HAND_POSITIONS = torch.tensor([[0.0], [1.0], [3.0], [7.0], [12.0], [20.0]])
HAND_LABELS = torch.tensor([0, 0, 1, 0, 1, 1])


def test_retrieval_hand_example() -> None:
    assert map_at_r(HAND_POSITIONS, HAND_LABELS) == pytest.approx(1.75 / 6)
    assert recall_at_k(HAND_POSITIONS, HAND_LABELS, k=1) == 0.5
    assert recall_at_k(HAND_POSITIONS, HAND_LABELS, k=2) == pytest.approx(4 / 6)
    assert recall_at_k(HAND_POSITIONS, HAND_LABELS, k=3) == pytest.approx(5 / 6)
    for chunk_size in (1, 4):
        chunked = map_at_r(HAND_POSITIONS, HAND_LABELS, chunk_size=chunk_size)
        assert chunked == pytest.approx(1.75 / 6)


def test_map_at_r_with_a_longer_ranking() -> None:
    # One class A = {0, 2, 4, 6} on a line with B = {1, 3, 5} items interleaved:
    # x = 0(A) 1(B) 2.1(A) 3.3(B) 4.6(A) 6(B) 7.5(A).
    # Query x=0 (R=3): neighbours 1(B), 2.1(A), 3.3(B) -> rel [0, 1, 0] -> AP = (1/3)(1/2).
    # This query pins the definition (precision counted only at ranks holding a relevant
    # item); the brute force checks the other six queries.
    positions = torch.tensor([[0.0], [1.0], [2.1], [3.3], [4.6], [6.0], [7.5]])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    assert brute_force_average_precisions(positions, labels)[0] == pytest.approx(1 / 6)
    assert map_at_r(positions, labels) == pytest.approx(
        np.mean(brute_force_average_precisions(positions, labels)))


def brute_force_average_precisions(embeddings: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """AP@R per query, straight from the definition, one query at a time."""
    distances = torch.cdist(embeddings, embeddings)
    values = []
    for query in range(len(labels)):
        others = [i for i in range(len(labels)) if i != query]
        ranked = sorted(others, key=lambda i: (float(distances[query, i]), i))
        r = sum(int(labels[i] == labels[query]) for i in others)
        hits, total = 0, 0.0
        for rank, item in enumerate(ranked[:r], start=1):
            if labels[item] == labels[query]:
                hits += 1
                total += hits / rank
        values.append(total / r)
    return values


def test_retrieval_matches_brute_force_with_uneven_classes() -> None:
    generator = torch.Generator().manual_seed(9)
    labels = torch.tensor([c for c, size in enumerate([2, 3, 5, 8, 4]) for _ in range(size)])
    embeddings = torch.randn(len(labels), 3, generator=generator) + labels[:, None] * 0.7
    expected = np.mean(brute_force_average_precisions(embeddings, labels))
    assert 0.2 < expected < 0.95  # neither trivial nor hopeless
    assert map_at_r(embeddings, labels, chunk_size=5) == pytest.approx(expected)
    distances = torch.cdist(embeddings, embeddings).fill_diagonal_(math.inf)
    nearest = distances.argmin(dim=1)
    assert recall_at_k(embeddings, labels, chunk_size=5) == pytest.approx(
        (labels[nearest] == labels).float().mean().item())


def chance_map_at_r(r: int, n: int) -> float:
    """Expected AP@R when the other n - 1 items are ranked uniformly at random.

    P(rel(i)) = R / (n - 1) and, given rel(i), P(i) = (1 + E[relevant among i-1 others]) / i with
    E = (i - 1)(R - 1) / (n - 2).
    """
    ranks = np.arange(1, r + 1)
    return float(r / (n - 1) / r * np.sum((1 + (ranks - 1) * (r - 1) / (n - 2)) / ranks))


def test_random_embeddings_retrieve_at_chance() -> None:
    # 10 classes x 50 items: random rankings give Recall@1 = R / (n - 1) = 49/499 = 0.0982 and
    # MAP@R = 0.01758. Over 100 seeds the spread was 0.014 and 0.0008: tolerances are ~4 sd.
    generator = torch.Generator().manual_seed(10)
    labels = torch.arange(500) % 10
    embeddings = torch.randn(500, 16, generator=generator)
    assert recall_at_k(embeddings, labels, k=1) == pytest.approx(49 / 499, abs=0.05)
    assert map_at_r(embeddings, labels) == pytest.approx(chance_map_at_r(49, 500), abs=0.0035)
    scores, same = pair_scores(embeddings, labels)
    assert roc_auc(scores, same) == pytest.approx(0.5, abs=0.02)


def test_retrieval_distance_argument() -> None:
    # Item 1 points the same way as item 0 but lies far away: cosine finds it, Euclidean and
    # Manhattan send item 0 to item 2 (other class). With R = 1, MAP@R equals Recall@1.
    embeddings = torch.tensor([[2.0, 0.0], [10.0, 1.5], [0.0, 1.0], [0.5, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert recall_at_k(embeddings, labels, distance="cosine") == 1.0
    assert recall_at_k(embeddings, labels, distance="euclidean") == 0.75
    assert map_at_r(embeddings, labels, distance=lambda x, y: torch.cdist(x, y, p=1.0)) == 0.75


def test_retrieval_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="single item: 2"):
        map_at_r(torch.randn(5, 2), torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match="single item: 2"):
        recall_at_k(torch.randn(5, 2), torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\] for 4 embeddings, got 4"):
        recall_at_k(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), k=4)
    with pytest.raises(ValueError, match=r"embeddings must be \[n, d\]"):
        map_at_r(torch.randn(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        map_at_r(torch.tensor([[0.0], [float("nan")]]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"must return a \[2, 2\] matrix"):
        map_at_r(torch.randn(2, 3), torch.tensor([0, 0]), distance=lambda x, y: x @ y.T[:, :1])


# ----------------------------------------------------------------------------------------------
# Real Omniglot: raw pixels are a weak but real embedding
# ----------------------------------------------------------------------------------------------


def load_omniglot_pixels(alphabet: str, characters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 20 drawings of the first ``characters`` characters of one evaluation alphabet,
    as 28x28 grey-level pixel vectors."""
    data = os.environ.get("FEWSHOT_DATA")
    if not data:
        pytest.skip("FEWSHOT_DATA is not set: real Omniglot images are unavailable")
    archive = zipfile.ZipFile(Path(data) / "omniglot" / "images_evaluation.zip")
    files: dict[str, list[str]] = defaultdict(list)
    for name in archive.namelist():
        parts = name.split("/")
        if len(parts) == 4 and parts[1] == alphabet and name.endswith(".png"):
            files[parts[2]].append(name)
    pixels, labels = [], []
    for label, character in enumerate(sorted(files)[:characters]):
        for name in sorted(files[character]):
            image = Image.open(io.BytesIO(archive.read(name))).convert("L")
            image = image.resize((28, 28), Image.Resampling.BOX)
            pixels.append(np.asarray(image, dtype=np.float32).ravel() / 255.0)
            labels.append(label)
    return torch.from_numpy(np.stack(pixels)), torch.tensor(labels)


def test_omniglot_pixels_beat_chance_and_shuffled_labels_do_not() -> None:
    embeddings, labels = load_omniglot_pixels("Angelic", characters=20)
    assert embeddings.shape == (400, 784)
    # 20 classes x 20 drawings: chance Recall@1 = 19/399 = 0.048, MAP@R = 0.0106.
    # Measured with raw pixels: Recall@1 0.655, MAP@R 0.225, pair AUC 0.729.
    assert recall_at_k(embeddings, labels, k=1) > 0.5
    assert map_at_r(embeddings, labels) > 0.15
    scores, same = pair_scores(embeddings, labels)
    assert roc_auc(scores, same) > 0.65
    shuffled = labels[torch.randperm(400, generator=torch.Generator().manual_seed(0))]
    assert recall_at_k(embeddings, shuffled, k=1) == pytest.approx(19 / 399, abs=0.04)
    assert map_at_r(embeddings, shuffled) == pytest.approx(chance_map_at_r(19, 400), abs=0.006)
