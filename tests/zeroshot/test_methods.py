"""Zero-shot methods and metrics without any data: ESZSL's closed form against a direct least-squares solve,
GZSL H and calibrated stacking on hand examples, the losses, every method on a planted problem, determinism,
and K = 0 / K >= 1 episodes with 95% intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewshot.zeroshot import (
    CalibrationFold,
    ZeroShotConfig,
    choose_calibration,
    episode_accuracies,
    eszsl_closed_form,
    evaluate_zero_shot,
    fit,
    generalized_accuracy,
    harmonic_mean,
    per_class_accuracy,
)
from fewshot.zeroshot.evaluate import episode_sampler
from fewshot.zeroshot.methods import (
    ESZSLSolver,
    eszsl_targets,
    rank_weighted_hinge_loss,
    ranking_hinge_loss,
    structured_hinge_loss,
)
from fewshot.zeroshot.pipeline import affordable_queries
from tests.support.zeroshot_planted import oracle_accuracy, planted_problem

# Gradient methods on the small planted problem: enough Adam steps to converge in well under a second each.
FAST = {"epochs": 30, "lr": 1e-2, "batch_size": 256}


@pytest.fixture(scope="module")
def planted():
    """60 classes (15 unseen), 40 attributes, 128-d features: data and the planted map."""
    return planted_problem(num_classes=60, num_unseen=15, attribute_dim=40, feature_dim=128, images_per_class=40,
                           noise=2.0, seed=0)


def _zsl(model, data) -> float:
    predicted = model.predict(data.features[data.test_unseen], data.attributes[data.unseen_classes],
                              data.unseen_classes)
    return per_class_accuracy(predicted, data.labels[data.test_unseen])


# ----------------------------------------------------------------------------------------------
# ESZSL
# ----------------------------------------------------------------------------------------------


def test_eszsl_closed_form_equals_least_squares():
    """The closed form minimises ||X V S^T - Y||^2 + g ||V S^T||^2 + l ||X V||^2 + g l ||V||^2: written as one
    stacked least-squares problem in vec(V) (column-major), numpy's lstsq gives the same V."""
    rng = np.random.default_rng(0)
    m, d, z, a = 30, 5, 4, 3
    x, s = rng.standard_normal((m, d)), rng.standard_normal((z, a))
    y = eszsl_targets(rng.integers(0, z, m), z)
    gamma, lam = 0.7, 0.3
    design = np.vstack([np.kron(s, x), np.sqrt(gamma) * np.kron(s, np.eye(d)), np.sqrt(lam) * np.kron(np.eye(a), x),
                        np.sqrt(gamma * lam) * np.eye(d * a)])
    target = np.concatenate([y.reshape(-1, order="F"), np.zeros(design.shape[0] - m * z)])
    direct = np.linalg.lstsq(design, target, rcond=None)[0].reshape(d, a, order="F")
    closed = eszsl_closed_form(x, y, s, gamma, lam)
    np.testing.assert_allclose(closed, direct, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ESZSLSolver(x, y, s).solve(gamma, lam), closed, rtol=1e-8, atol=1e-10)


def test_eszsl_targets_are_one_hot():
    assert eszsl_targets(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]


# ----------------------------------------------------------------------------------------------
# Metrics on hand examples
# ----------------------------------------------------------------------------------------------


def test_per_class_accuracy_and_harmonic_mean():
    # Class 0 has four images (three right), classes 1 and 2 one each (right): (3/4 + 1 + 1) / 3, not 5/6.
    assert per_class_accuracy(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 0, 0, 1, 2])) == pytest.approx(11 / 12)
    assert harmonic_mean(0.25, 0.75) == pytest.approx(0.375)
    assert harmonic_mean(0.0, 0.0) == 0.0


# Seen classes 0 and 1, unseen 2 and 3; columns are the candidates 0..3.
HAND_SCORES = np.array([
    [0.9, 0.1, 0.8, 0.0],   # label 0: best seen 0 (right), best unseen 2, gap 0.1
    [0.5, 0.6, 0.0, 0.2],   # label 0: best seen 1 (wrong), gap 0.4
    [0.2, 0.7, 0.1, 0.65],  # label 1: best seen 1 (right), gap 0.05
    [0.6, 0.0, 0.5, 0.1],   # label 2: best unseen 2 (right), gap 0.1
    [0.3, 0.2, 0.0, 0.9],   # label 3: best unseen 3 (right), gap -0.6
    [0.7, 0.1, 0.6, 0.4],   # label 3: best unseen 2 (wrong), gap 0.1
])
HAND_LABELS = np.array([0, 0, 1, 2, 3, 3])
CANDIDATES, SEEN = np.arange(4), np.array([0, 1])


@pytest.mark.parametrize("calibration, u, s", [
    (0.0, (0 + 1 / 2) / 2, (1 / 2 + 1) / 2),    # predictions 0, 1, 1, 0, 3, 0
    (0.07, (0 + 1 / 2) / 2, (1 / 2 + 0) / 2),   # image 2 (gap 0.05) now goes unseen: 0, 1, 3, 0, 3, 0
    (0.1, (1 + 1 / 2) / 2, 0.0),                # gaps <= 0.1 go unseen: 2, 1, 3, 2, 3, 2
    (-1.0, 0.0, (1 / 2 + 1) / 2),               # everything seen
])
def test_gzsl_and_calibrated_stacking_by_hand(calibration, u, s):
    result = generalized_accuracy(HAND_SCORES, HAND_LABELS, CANDIDATES, SEEN, calibration)
    assert (result.u, result.s) == (pytest.approx(u), pytest.approx(s))
    assert result.h == pytest.approx(harmonic_mean(u, s))
    # Away from ties, calibrated stacking is the argmax after subtracting the calibration from seen scores.
    if calibration in (0.0, -1.0):
        shifted = HAND_SCORES - calibration * np.isin(CANDIDATES, SEEN)
        predicted = CANDIDATES[shifted.argmax(1)]
        is_seen = np.isin(HAND_LABELS, SEEN)
        assert per_class_accuracy(predicted[~is_seen], HAND_LABELS[~is_seen]) == pytest.approx(u)


def test_choose_calibration_by_hand():
    # Every unseen image's best unseen score is 0.1 below its best seen score: plain stacking gets u = 0, H = 0;
    # any calibration in [0.1, 0.4) makes everything right, and the smallest such value is chosen.
    scores = np.array([[0.9, 0.1, 0.5, 0.0], [0.1, 0.9, 0.0, 0.5], [0.6, 0.0, 0.5, 0.1], [0.0, 0.6, 0.1, 0.5]])
    labels = np.array([0, 1, 2, 3])
    assert generalized_accuracy(scores, labels, CANDIDATES, SEEN).h == 0.0
    value, h = choose_calibration([CalibrationFold(scores, labels, CANDIDATES, SEEN)])
    assert h == 1.0 and value == pytest.approx(0.1)
    # On the first hand example no calibration beats plain stacking (H 0.375 at 0), checked on a fine grid.
    value, h = choose_calibration([CalibrationFold(HAND_SCORES, HAND_LABELS, CANDIDATES, SEEN)])
    grid = max(generalized_accuracy(HAND_SCORES, HAND_LABELS, CANDIDATES, SEEN, g).h for g in np.linspace(-1, 1, 2001))
    assert value == 0.0 and h == pytest.approx(0.375) == grid


def test_gzsl_needs_seen_and_unseen():
    with pytest.raises(ValueError, match="both seen and unseen classes among the candidates"):
        generalized_accuracy(HAND_SCORES[:, :2], HAND_LABELS, CANDIDATES[:2], SEEN)
    with pytest.raises(ValueError, match=r"scores has shape \(6, 4\), expected \[images=5, classes=4\]"):
        generalized_accuracy(HAND_SCORES, HAND_LABELS[:5], CANDIDATES, SEEN)


def test_hinge_losses_by_hand():
    scores = torch.tensor([[1.0, 0.95, 0.5, 0.99]])  # true class 0; classes 1 and 3 violate a margin of 0.1
    target = torch.tensor([0])
    assert ranking_hinge_loss(scores, target, 0.1).item() == pytest.approx(0.05 + 0.09)
    assert structured_hinge_loss(scores, target, 0.1).item() == pytest.approx(0.09)
    # ALE: two violators, weight (1 + 1/2) / 2 on each term.
    assert rank_weighted_hinge_loss(scores, target, 0.1).item() == pytest.approx(0.75 * (0.05 + 0.09))
    assert rank_weighted_hinge_loss(torch.tensor([[1.0, 0.0]]), target, 0.1).item() == 0.0


# ----------------------------------------------------------------------------------------------
# Every method on a planted problem
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, floor", [
    ({"method": "eszsl", "eszsl_gamma": 10.0, "eszsl_lambda": 0.1}, 0.8),
    ({"method": "softmax", **FAST}, 0.75),
    ({"method": "softmax", "encoder": "mlp", "encoder_args": {"hidden": 128}, **FAST}, 0.75),
    # The weakest on planted problems: the prototypes' norms act as class biases learned on seen classes only.
    ({"method": "softmax", "score": "sqeuclidean", "epochs": 30, "batch_size": 256}, 0.3),
    ({"method": "ale", **FAST}, 0.6),
    ({"method": "devise", **FAST}, 0.6),
    ({"method": "sje", **FAST}, 0.6),
])
def test_methods_beat_chance_on_planted_problem(planted, settings, floor):
    data, mapping = planted
    model = fit(data.features[data.trainval], data.labels[data.trainval], data.attributes, data.seen_classes,
                ZeroShotConfig(**settings))
    accuracy = _zsl(model, data)
    chance = 1 / len(data.unseen_classes)
    assert oracle_accuracy(data, mapping) > 0.95  # what the planted noise allows
    assert accuracy > max(floor, 4 * chance), (settings, accuracy)


def test_same_seed_same_model(planted):
    data, _ = planted
    config = ZeroShotConfig(method="softmax", epochs=3, seed=4)
    arguments = (data.features[data.trainval], data.labels[data.trainval], data.attributes, data.seen_classes)
    torch.manual_seed(123)
    first = fit(*arguments, config).scores(data.features[:50], data.attributes)
    global_state = torch.random.get_rng_state()
    second = fit(*arguments, config).scores(data.features[:50], data.attributes)
    assert np.array_equal(first, second)
    assert torch.equal(global_state, torch.random.get_rng_state())  # fitting leaves the global RNG alone
    other = fit(*arguments, ZeroShotConfig(method="softmax", epochs=3, seed=5)).scores(data.features[:50],
                                                                                        data.attributes)
    assert not np.array_equal(first, other)


def test_config_checks():
    with pytest.raises(ValueError, match="unknown zero-shot method 'nope'; valid names: softmax, devise, ale"):
        ZeroShotConfig(method="nope").resolved()
    with pytest.raises(ValueError, match="eszsl is a closed form of a linear encoder with a dot-product score"):
        ZeroShotConfig(method="eszsl", encoder="mlp").resolved()
    with pytest.raises(ValueError, match="unknown --encoder-arg 'width' for attribute encoder 'mlp'"):
        ZeroShotConfig(method="softmax", encoder="mlp", encoder_args={"width": 3}).resolved()
    assert ZeroShotConfig(method="softmax").resolved().scale == 16.0
    assert ZeroShotConfig(method="ale").resolved().score == "dot"


# ----------------------------------------------------------------------------------------------
# Episodes and the whole protocol
# ----------------------------------------------------------------------------------------------


def test_zero_and_few_shot_episodes(planted):
    data, _ = planted
    model = fit(data.features[data.trainval], data.labels[data.trainval], data.attributes, data.seen_classes,
                ZeroShotConfig(method="eszsl", eszsl_gamma=10.0, eszsl_lambda=0.1))
    features, labels = data.features[data.test_unseen], data.labels[data.test_unseen]
    arguments = (model, features, labels, data.attributes, data.unseen_classes)
    zero = episode_accuracies(*arguments, ways=5, shots=0, queries=5, episodes=60, seed=2)
    assert zero.shape == (60,) and zero.mean() > 0.8  # chance is 0.2
    assert np.array_equal(zero, episode_accuracies(*arguments, ways=5, shots=0, queries=5, episodes=60, seed=2))
    few = episode_accuracies(*arguments, ways=5, shots=1, queries=5, episodes=60, seed=2, fusion_weight=[1.0, 0.5, 0.0])
    assert few.shape == (3, 60)
    # Weight 1 ignores the support: exactly the K = 0 episodes (same classes, same queries).
    assert np.array_equal(few[0], zero)
    sampler_0, sampler_1 = (episode_sampler(labels, data.unseen_classes, 5, k, 5, 60, 2) for k in (0, 1))
    assert np.array_equal(sampler_0.episode(7).query, sampler_1.episode(7).query)
    assert few[2].mean() > 0.4  # support mean alone, one noisy shot


def test_evaluate_zero_shot_report(planted):
    data, _ = planted
    report = evaluate_zero_shot(data, ZeroShotConfig(method="softmax", **FAST), shots=(0, 2), ways=5, queries=5,
                                episodes=40, validation_episodes=20, seed=1)
    json.dumps(report)  # the CLI writes it as JSON
    assert report["dataset"]["unseen_classes"] == 15 and report["zsl_top1"] > 0.7
    assert set(report["gzsl"]) == {"u", "s", "H", "calibration"} and report["gzsl"]["calibration"] == 0.0
    calibrated = report["gzsl_calibrated"]
    assert calibrated["calibration"] == report["validation"]["calibration"]["value"]
    assert calibrated["H"] == pytest.approx(harmonic_mean(calibrated["u"], calibrated["s"]))
    zero, two = report["episodes"]
    assert (zero["shots"], zero["episodes"], two["shots"]) == (0, 40, 2)
    assert 0 < zero["ci95"] < 0.2 and "support_only" in two and 0.0 <= two["fusion_weight"] <= 1.0
    assert str(two["shots"]) in report["validation"]["fusion_weight"]


def test_eszsl_tuned_on_validation(planted):
    data, _ = planted
    report = evaluate_zero_shot(data, ZeroShotConfig(method="eszsl"), calibration="none", shots=(0,), ways=5,
                                queries=5, episodes=20)
    chosen = report["validation"]["eszsl"]
    assert chosen["eszsl_gamma"] == report["config"]["eszsl_gamma"] and chosen["validation_zsl_top1"] > 0.5
    assert report["gzsl_calibrated"] is None and report["zsl_top1"] > 0.8


def test_protocol_argument_checks(planted):
    data, _ = planted
    with pytest.raises(ValueError, match="calibration must be 'validation', 'none' or a number, got 'auto'"):
        evaluate_zero_shot(data, calibration="auto")
    with pytest.raises(ValueError, match=r"fusion_weight must be in \[0, 1\], got 1.5"):
        evaluate_zero_shot(data, fusion_weight=1.5)
    with pytest.raises(ValueError, match="tune chooses ESZSL's regularisers; ale has none to choose"):
        evaluate_zero_shot(data, ZeroShotConfig(method="ale"), tune=True)


def test_eszsl_score_grid_matches_solutions():
    rng = np.random.default_rng(1)
    x, s, queries = rng.standard_normal((40, 6)), rng.standard_normal((5, 4)), rng.standard_normal((7, 6))
    solver = ESZSLSolver(x, eszsl_targets(rng.integers(0, 5, 40), 5), s)
    grid = list(solver.score_grid(queries, s[:3], [0.5, 2.0], [0.1, 1.0]))
    assert [(g, l) for g, l, _ in grid] == [(0.5, 0.1), (0.5, 1.0), (2.0, 0.1), (2.0, 1.0)]
    for gamma, lam, scores in grid:
        np.testing.assert_allclose(scores, queries @ solver.solve(gamma, lam) @ s[:3].T, rtol=1e-9, atol=1e-12)


def test_affordable_queries():
    labels = np.array([0] * 16 + [1] * 20 + [2] * 3)
    assert affordable_queries(labels, np.array([0, 1]), 5, 15) == 11  # SUN-like: 16 images, 5 shots
    assert affordable_queries(labels, np.array([0, 1]), 0, 15) == 15  # K = 0 still draws one (unused) support
    with pytest.raises(ValueError, match="5-shot episodes need at least 6 images per class, but a class has only 3"):
        affordable_queries(labels, np.array([1, 2]), 5, 15)
