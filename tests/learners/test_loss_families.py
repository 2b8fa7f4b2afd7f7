"""The proxy (classification-based) and pair losses of issue 16: values worked out by hand on tiny 2-D
examples, value and gradient against pytorch-metric-learning (a test-only dependency; those tests skip
without it), argument checks, and three episodes of training through `train()` with a checkpoint that
rebuilds.

Deliberate differences from pytorch-metric-learning (pml), each also in the loss's docstring:
- ArcFace: our ``cos(theta + m)`` is ``cos cos m - sin sin m`` (pml differentiates ``acos``), so the
  gradient is finite at cos = +-1 where pml's is NaN; equal elsewhere. pml has no ``easy_margin``.
- ArcFace's margin is in radians (pml: degrees); NormFace takes a scale (pml: its inverse, temperature).
- N-pair: pml's default distance normalises embeddings; ours is Sohn's raw inner product (pml with
  ``DotProductSimilarity(normalize_embeddings=False)``), plus an optional L2 penalty pml does not have.
- ProxyNCA / Circle: pml drops samples whose loss is exactly 0 or infinite in floating point from the
  average; we do not (no example here is in that regime).
- SphereFace: pml has no lambda annealing; ours with ``lambda_start = lambda_min = 0`` is pml's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from episodes.sampler import EpisodeSampler
from fewshot.model.checkpoint import model_from_checkpoint
from fewshot.data import load_splits
from fewshot.distances import Cosine, SquaredEuclidean
from fewshot.learners import (
    LEARNERS,
    ArcFaceLearner,
    CircleLearner,
    ClassCircleLearner,
    CosFaceLearner,
    EpisodeEmbeddings,
    LiftedStructureLearner,
    MultiSimilarityLearner,
    NormFaceLearner,
    NPairLearner,
    ProxyAnchorLearner,
    ProxyNCALearner,
    SphereFaceLearner,
    build_learner,
    lifted_structure_loss,
    n_pair_loss,
)
from fewshot.learners.n_pair import one_pair_per_class
from fewshot.learners.proxies import CosineScore
from fewshot.learners.sphereface import psi
from fewshot.learners.miners import MultiSimilarityMiner
from fewshot.model.network import ModelSpec
from fewshot.training import TrainConfig, train

NEW_LEARNERS = ("normface", "cosface", "arcface", "sphereface", "proxy-nca", "proxy-anchor", "lifted-structure",
                "n-pair", "multi-similarity", "circle", "circle-class")
PROXY_LEARNERS = ("normface", "cosface", "arcface", "sphereface", "proxy-nca", "proxy-anchor", "circle-class")


def unit(degrees: float) -> list[float]:
    """The 2-D unit vector at `degrees` from the x axis."""
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def batch_of(learner, embeddings: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor | None = None) -> EpisodeEmbeddings:
    """An episode whose pooled `embeddings` (all as support, no query) have episode labels `labels`."""
    ways = int(labels.max()) + 1
    return EpisodeEmbeddings(embeddings, labels, embeddings[:0], labels[:0], ways, learner.scoring_distance, classes)


def make(name: str, distance=None, num_classes: int = 3, dim: int = 2, **kwargs):
    """The learner `name` with the model's injected arguments given by hand (proxy learners take them)."""
    injected = {"num_classes": num_classes, "dim": dim} if name in PROXY_LEARNERS else {}
    return LEARNERS[name](distance=distance, **injected, **kwargs)


def set_proxies(learner, rows) -> None:
    with torch.no_grad():
        learner.proxies.copy_(torch.tensor(rows, dtype=learner.proxies.dtype))


def log1p_exp_sum(*exponents: float) -> float:
    return math.log(1.0 + sum(math.exp(e) for e in exponents))


# ----------------------------------------------------------------------------------------- by hand

# Proxies on the axes: w0 = (1, 0), w1 = (0, 1). Embedding a = (2, 0) of class 0 (cosines 1 and 0),
# b = (1, 1) of class 1 (cosines 1/sqrt 2 and 1/sqrt 2). Episode label = global class id here.
AXES = [[1.0, 0.0], [0.0, 1.0]]
AB = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
AB_LABELS = torch.tensor([0, 1])
IDENTITY = torch.tensor([0, 1])
R2 = 1 / math.sqrt(2)


def test_normface_by_hand():
    learner = NormFaceLearner(num_classes=2, dim=2, scale=2.0, learn_scale=False)
    set_proxies(learner, AXES)
    # a: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2); b: both cosines equal, log 2.
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert learner.loss(batch_of(learner, AB, AB_LABELS, IDENTITY), None).item() == pytest.approx(expected, rel=1e-6)
    # Evaluation scores prototypes by -scale * cos, at the loss's own scale.
    assert isinstance(learner.scoring_distance, CosineScore)
    torch.testing.assert_close(learner.scoring_distance(AB[:1], AB), torch.tensor([[-2.0, -2 * R2]]))


def test_normface_learns_its_scale_and_keeps_it_positive():
    learner = NormFaceLearner(num_classes=2, dim=2, scale=3.0)
    assert sorted(name for name, _ in learner.named_parameters()) == ["distance.scale", "log_scale", "proxies"]
    assert learner.scale.item() == pytest.approx(3.0)
    learner.loss(batch_of(learner, AB, AB_LABELS, IDENTITY), None).backward()
    assert learner.log_scale.grad is not None and learner.log_scale.grad != 0
    fixed = NormFaceLearner(num_classes=2, dim=2, scale=3.0, learn_scale=False)
    assert "log_scale" not in dict(fixed.named_parameters()) and "log_scale" in fixed.state_dict()


def test_cosface_by_hand():
    learner = CosFaceLearner(num_classes=2, dim=2, margin=0.5, scale=2.0)
    set_proxies(learner, AXES)
    # a: logits 2 (1 - 0.5) = 1 and 0: log(1 + e^-1). b: 2 (0.7071 - 0.5) and 2 * 0.7071: log(1 + e^1).
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert learner.loss(batch_of(learner, AB, AB_LABELS, IDENTITY), None).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("degrees", "easy", "target"), [
    (60, False, math.cos(math.radians(90))),   # theta + m = 90 degrees
    (120, False, math.cos(math.radians(150))),  # still below pi - m = 150: the margin applies
    (170, False, math.cos(math.radians(170)) - math.pi / 6 * 0.5),  # past pi - m: cos(theta) - m sin(m)
    (60, True, 0.0),                            # easy margin, cos > 0: margin applies
    (120, True, math.cos(math.radians(120))),  # easy margin, cos < 0: plain cosine
])
def test_arcface_by_hand_with_threshold_and_easy_margin(degrees, easy, target):
    # The embedding is `degrees` from its proxy w0 and 90 - degrees from w1 = (0, 1); m = 30 degrees.
    learner = ArcFaceLearner(num_classes=2, dim=2, margin=math.pi / 6, scale=1.0, easy_margin=easy)
    set_proxies(learner, AXES)
    other = math.cos(math.radians(90 - degrees))
    expected = math.log(1 + math.exp(other - target))
    loss = learner.loss(batch_of(learner, torch.tensor([unit(degrees)]), torch.tensor([0]), torch.tensor([0])), None)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_arcface_target_logit_decreases_in_theta_and_has_finite_gradient_at_the_ends():
    learner = ArcFaceLearner(num_classes=2, dim=2, margin=0.5)
    cosine = torch.cos(torch.linspace(0, math.pi, 2001, dtype=torch.float64))
    assert (learner.target_cosine(cosine).diff() < 0).all()  # cosine falls with theta, and so must the logit
    ends = torch.tensor([1.0, -1.0], requires_grad=True)
    learner.target_cosine(ends).sum().backward()
    assert torch.isfinite(ends.grad).all()


def test_sphereface_psi_and_by_hand():
    # m = 2: psi = cos 2theta on [0, 90], -cos 2theta - 2 on [90, 180] (continuous, decreasing).
    cosine = torch.tensor([math.cos(math.radians(a)) for a in (0, 60, 90, 120, 180)], dtype=torch.float64)
    expected = torch.tensor([1.0, -0.5, -1.0, -1.5, -3.0], dtype=torch.float64)
    torch.testing.assert_close(psi(cosine, 2), expected)
    learner = SphereFaceLearner(num_classes=2, dim=2, margin=2, lambda_start=0.0, lambda_min=0.0)
    set_proxies(learner, AXES)
    # x = 2 (cos 60, sin 60) of class 0: target ||x|| psi(60) = 2 * -0.5 = -1, other 2 cos 30 = sqrt 3.
    x = 2 * torch.tensor([unit(60)])
    loss = learner.loss(batch_of(learner, x, torch.tensor([0]), torch.tensor([0])), None)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(math.sqrt(3) + 1)), rel=1e-6)
    # The normalised variant: a fixed scale instead of the feature norm, so the norm of x no longer matters.
    scaled = SphereFaceLearner(num_classes=2, dim=2, margin=2, scale=2.0, lambda_start=0.0, lambda_min=0.0)
    set_proxies(scaled, AXES)
    assert scaled.loss(batch_of(scaled, 5 * x, torch.tensor([0]), torch.tensor([0])), None).item() == pytest.approx(loss.item(), rel=1e-6)


def test_sphereface_annealing_counts_training_steps_only():
    learner = SphereFaceLearner(num_classes=2, dim=2, margin=2, lambda_start=1.0, lambda_min=0.0, lambda_decay=1.0)
    set_proxies(learner, AXES)
    x, labels = torch.tensor([unit(60)]), torch.tensor([0])
    # lambda = 1 at step 0: target (1 * cos 60 + psi(60)) / 2 = (0.5 - 0.5) / 2 = 0; other cos 30.
    loss = learner.loss(batch_of(learner, x, labels, labels), None)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(math.sqrt(3) / 2)), rel=1e-6)
    assert int(learner.steps) == 1 and learner.annealing() == pytest.approx(0.5)  # 1 / (1 + 1 * 1)
    learner.eval()
    learner.loss(batch_of(learner, x, labels, labels), None)
    with torch.no_grad():
        learner.train().loss(batch_of(learner, x, labels, labels), None)
    assert int(learner.steps) == 1 and "steps" in learner.state_dict()
    assert SphereFaceLearner(num_classes=2, dim=2).annealing() == 1000.0  # the paper's schedule starts at 1000


def test_proxy_nca_by_hand():
    learner = ProxyNCALearner(num_classes=2, dim=2, scale=1.0)
    set_proxies(learner, [[3.0, 0.0], [0.0, 0.5]])  # normalised to the axes
    # x = (2, 0) of class 0: squared distances of unit vectors 0 and 2: -log(1 / (1 + e^-2)).
    x, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    assert learner.loss(batch_of(learner, x, labels, labels), None).item() == pytest.approx(math.log(1 + math.exp(-2)))
    original = ProxyNCALearner(num_classes=2, dim=2, scale=1.0, exclude_positive=True)
    set_proxies(original, AXES)
    # Without the positive in the denominator: -log(e^0 / e^-2) = -2.
    assert original.loss(batch_of(original, x, labels, labels), None).item() == pytest.approx(-2.0)
    # Evaluation: the scaled squared distance between unit vectors, whatever the embeddings' norms.
    torch.testing.assert_close(learner.scoring_distance(torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 2.0]])),
                               torch.tensor([[2.0]]))


def test_proxy_anchor_by_hand():
    # Three proxies (1, 0), (0, 1), (-1, 0); class 2 has no embedding in the batch. a = (1, 0) class 0,
    # b = (0, 1) class 1; alpha 1, delta 0.1.
    learner = ProxyAnchorLearner(num_classes=3, dim=2, alpha=1.0, margin=0.1)
    set_proxies(learner, [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    # Pull, over the 2 proxies with positives: each log(1 + e^{-(1 - 0.1)}).
    pull = log1p_exp_sum(-0.9)
    # Push, over all 3 proxies: w0 and w1 see the other embedding at cos 0: log(1 + e^{0.1}) each;
    # w2 sees a at cos -1 and b at cos 0: log(1 + e^{-0.9} + e^{0.1}).
    push = (2 * log1p_exp_sum(0.1) + log1p_exp_sum(-0.9, 0.1)) / 3
    assert learner.loss(batch_of(learner, x, labels, torch.tensor([0, 1])), None).item() == pytest.approx(pull + push, rel=1e-6)


# The points of tests/test_losses.py on the x axis: x0 = 0, x1 = 1 (class 0), x2 = 1.5, x3 = 4 (class 1).
LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [4.0, 0.0]])
LINE_LABELS = torch.tensor([0, 0, 1, 1])


def test_lifted_structure_by_hand():
    # Margin 1. Negatives of x0: x2, x3 at 1.5, 4; of x1: 0.5, 3; of x2: 1.5, 0.5; of x3: 4, 3.
    # J_01 = log(e^{1-1.5} + e^{1-4} + e^{1-0.5} + e^{1-3}) + 1; J_23 = log(the same four terms) + 2.5.
    soft = math.log(math.exp(-0.5) + math.exp(-3) + math.exp(0.5) + math.exp(-2))
    expected = ((soft + 1) ** 2 + (soft + 2.5) ** 2) / (2 * 2)
    dist = torch.cdist(LINE, LINE)
    assert lifted_structure_loss(dist, LINE_LABELS, 1.0).item() == pytest.approx(expected, rel=1e-6)
    learner = LiftedStructureLearner(SquaredEuclidean(), margin=1.0)  # trains the square root of its distance
    assert learner.loss(batch_of(learner, LINE, LINE_LABELS), None).item() == pytest.approx(expected, rel=1e-6)
    # One class only: no negative pair, a zero loss that still backpropagates.
    points = LINE.clone().requires_grad_()
    lifted_structure_loss(torch.cdist(points, points) + 0.0, torch.zeros(4, dtype=torch.long), 1.0).backward()
    assert torch.equal(points.grad, torch.zeros_like(points))


def test_n_pair_by_hand_and_its_pairs():
    anchors, positives = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # Inner products [[2, 0], [0, 1]]: log(1 + e^{0-2}) and log(1 + e^{0-1}); L2: (1 + 1 + 4 + 1) / 4.
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert n_pair_loss(anchors, positives).item() == pytest.approx(expected, rel=1e-6)
    assert n_pair_loss(anchors, positives, l2_reg=0.1).item() == pytest.approx(expected + 0.1 * 7 / 4, rel=1e-6)
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 3])  # class 3 has one item: no pair
    anchor, positive = one_pair_per_class(labels, torch.Generator().manual_seed(0))
    assert labels[anchor].tolist() == [0, 1, 2] and labels[positive].tolist() == [0, 1, 2]
    assert (anchor != positive).all()
    replay = one_pair_per_class(labels, torch.Generator().manual_seed(0))
    assert torch.equal(replay[0], anchor) and torch.equal(replay[1], positive)
    draws = {tuple(one_pair_per_class(labels, torch.Generator().manual_seed(s))[0].tolist()) for s in range(20)}
    assert len(draws) > 1  # the generator picks the items
    learner = NPairLearner(l2_reg=0.0)
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # Two items per class: the pair is both of them, in either order; the inner products are those above.
    loss = learner.loss(batch_of(learner, x, torch.tensor([0, 0, 1, 1])), torch.Generator().manual_seed(0))
    swapped = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(swapped, rel=1e-6) or loss.item() == pytest.approx(expected, rel=1e-6)


# Unit vectors at 0 and 60 degrees (class 0), 90 and 180 degrees (class 1). Cosines:
#   S_ab = 0.5, S_ac = 0, S_ad = -1, S_bc = cos 30 = 0.866, S_bd = cos 120 = -0.5, S_cd = 0.
CIRCLE_POINTS = torch.tensor([unit(0), unit(60), unit(90), unit(180)])
CIRCLE_LABELS = torch.tensor([0, 0, 1, 1])
COS30 = math.sqrt(3) / 2


def test_multi_similarity_miner_and_loss_by_hand():
    # epsilon 0.1. a: hardest positive b (0.5) -- c (0 + 0.1) and d are below it; b (0.5 - 0.1) is not
    # below the max negative 0: nothing. b: c (0.966 > 0.5) kept, d not; a (0.4 < 0.866) kept.
    # c: a (0.1 > 0) and b kept; d (-0.1 < 0.866) kept. d: negatives -0.9, -0.4 not > 0; c (-0.1 < -0.5) not.
    similarity = CIRCLE_POINTS @ CIRCLE_POINTS.T
    positive, negative = MultiSimilarityMiner(epsilon=0.1)(similarity, CIRCLE_LABELS)
    assert positive.nonzero().tolist() == [[1, 0], [2, 3]]
    assert negative.nonzero().tolist() == [[1, 2], [2, 0], [2, 1]]
    # alpha 2, beta 4, base 0.5; anchors a and d have no pairs (loss 0), the mean is over all 4.
    b = 0.5 * math.log(1 + math.exp(-2 * (0.5 - 0.5))) + 0.25 * log1p_exp_sum(4 * (COS30 - 0.5))
    c = 0.5 * math.log(1 + math.exp(-2 * (0.0 - 0.5))) + 0.25 * log1p_exp_sum(4 * (0 - 0.5), 4 * (COS30 - 0.5))
    learner = MultiSimilarityLearner(alpha=2.0, beta=4.0, base=0.5, epsilon=0.1)
    loss = learner.loss(batch_of(learner, 3 * CIRCLE_POINTS, CIRCLE_LABELS), None)  # the norm does not matter
    assert loss.item() == pytest.approx((b + c) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="epsilon must be a finite number >= 0, got -1"):
        MultiSimilarityMiner(epsilon=-1)


def circle_terms(s_p: float, s_n: list[float], m: float, gamma: float) -> float:
    """log(1 + exp(-gamma a_p (s_p - (1 - m))) * sum exp(gamma a_n (s_n - m))) for one positive."""
    pull = -gamma * max(1 + m - s_p, 0) * (s_p - (1 - m))
    pushes = [gamma * max(s + m, 0) * (s - m) for s in s_n]
    return math.log(1 + math.exp(pull) * sum(math.exp(p) for p in pushes))


def test_circle_pair_and_class_forms_by_hand():
    # Pair form on a (0), b (60) of class 0 and c (90) of class 1; m 0.25, gamma 1. c has no positive,
    # so the mean is over a and b. For a: s_p = 0.5, s_n = 0: pull -0.75 (0.5 - 0.75) = 0.1875,
    # push 0.25 (0 - 0.25) = -0.0625, loss log(1 + e^0.125).
    points, labels = CIRCLE_POINTS[:3], CIRCLE_LABELS[:3]
    a = circle_terms(0.5, [0.0], 0.25, 1.0)
    assert a == pytest.approx(math.log(1 + math.exp(0.125)))
    b = circle_terms(0.5, [COS30], 0.25, 1.0)
    learner = CircleLearner(m=0.25, gamma=1.0)
    assert learner.loss(batch_of(learner, points, labels), None).item() == pytest.approx((a + b) / 2, rel=1e-6)
    # Class form: x at 0 degrees of class 0, proxies at 60 and 90 degrees: the same numbers as anchor a.
    proxy = ClassCircleLearner(num_classes=2, dim=2, m=0.25, gamma=1.0)
    set_proxies(proxy, [unit(60), unit(90)])
    x = torch.tensor([unit(0)])
    assert proxy.loss(batch_of(proxy, x, torch.tensor([0]), torch.tensor([0])), None).item() == pytest.approx(a, rel=1e-6)


# ----------------------------------------------------------------------------------------- declarations and errors


def test_declared_distances_normalisation_and_scoring():
    for name in ("normface", "cosface", "arcface", "sphereface", "proxy-anchor", "n-pair", "multi-similarity",
                 "circle", "circle-class"):
        assert LEARNERS[name].distances == ("cosine",) and LEARNERS[name].default_distance == "cosine", name
    for name in ("proxy-nca", "lifted-structure"):
        assert "euclidean" in LEARNERS[name].distances and LEARNERS[name].default_distance == "euclidean", name
    assert not LEARNERS["sphereface"].normalize and not LEARNERS["n-pair"].normalize
    assert all(LEARNERS[n].normalize for n in NEW_LEARNERS if n not in ("sphereface", "n-pair"))
    with pytest.raises(ValueError, match="does not accept a SquaredEuclidean distance; it accepts: cosine"):
        build_learner("multi-similarity", SquaredEuclidean())
    with pytest.raises(ValueError, match="--metric 'euclidean' does not suit the arcface learner; it accepts: cosine"):
        ModelSpec(learner="arcface", metric="euclidean", num_classes=3)
    # The spec fills in each learner's own distance and normalisation.
    spec = ModelSpec(learner="multi-similarity")
    assert spec.metric == "cosine" and spec.normalize is True
    # Cosine-softmax losses score prototypes at their own scale; the others with their injected distance.
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(CosFaceLearner(num_classes=2, dim=2, scale=30.0).scoring_distance(x, y),
                               torch.tensor([[-30.0, 0.0]]))
    circle = CircleLearner(Cosine(temperature=5.0))
    assert circle.scoring_distance is circle.distance
    sphere = SphereFaceLearner(num_classes=2, dim=2)
    assert sphere.scoring_distance is sphere.distance  # scaled by the feature norm: no scale of its own
    assert isinstance(SphereFaceLearner(num_classes=2, dim=2, scale=8.0).scoring_distance, CosineScore)


@pytest.mark.parametrize("name", PROXY_LEARNERS)
def test_proxy_losses_need_global_class_ids_and_num_classes(name):
    learner = make(name, num_classes=4)
    assert learner.proxies.shape == (4, 2)
    with pytest.raises(ValueError, match="global class id"):
        learner.loss(batch_of(learner, AB, AB_LABELS), None)
    with pytest.raises(ValueError, match=r"global class ids must lie in 0..3"):
        learner.loss(batch_of(learner, AB, AB_LABELS, torch.tensor([1, 7])), None)
    with pytest.raises(ValueError, match="needs num_classes"):
        LEARNERS[name](dim=2)
    with pytest.raises(ValueError, match="2-dimensional proxies, got embeddings of size 3"):
        learner.loss(batch_of(learner, torch.ones(2, 3), AB_LABELS, torch.tensor([0, 1])), None)
    # Through forward(), as the model calls it, with classes.
    output = learner(AB, AB_LABELS, AB, AB_LABELS, classes=torch.tensor([3, 0]))
    assert torch.isfinite(output.loss) and output.logits.shape == (2, 2)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("normface", {"scale": 0.0}, "scale must be a finite number > 0 for NormFace, got 0.0"),
    ("cosface", {"margin": 1.5}, r"margin must be in \[0, 1\] for CosFace, got 1.5"),
    ("cosface", {"scale": -2.0}, "scale must be a finite number > 0 for CosFace, got -2.0"),
    ("arcface", {"margin": 2.0}, r"margin \(radians\) must be in \[0, 1.5708\) for ArcFace, got 2.0"),
    ("sphereface", {"margin": 0}, "margin must be an integer >= 1 for SphereFace"),
    ("sphereface", {"lambda_min": -1.0}, "lambda_min must be a finite number >= 0 for SphereFace, got -1.0"),
    ("proxy-nca", {"scale": float("nan")}, "scale must be a finite number > 0 for ProxyNCA, got nan"),
    ("proxy-anchor", {"alpha": 0.0}, "alpha must be a finite number > 0 for Proxy-Anchor, got 0.0"),
    ("proxy-anchor", {"margin": -0.1}, r"margin must be in \[0, 1\] for Proxy-Anchor, got -0.1"),
    ("lifted-structure", {"margin": 0.0}, "margin must be a finite number > 0 for the lifted structure loss, got 0.0"),
    ("n-pair", {"l2_reg": -1.0}, "l2_reg must be a finite number >= 0 for the N-pair loss, got -1.0"),
    ("multi-similarity", {"beta": -50.0}, "beta must be a finite number > 0 for the multi-similarity loss, got -50.0"),
    ("multi-similarity", {"epsilon": -0.1}, "epsilon must be a finite number >= 0, got -0.1"),
    ("circle", {"m": 1.0}, r"m \(the relaxation margin\) must be in \[0, 1\) for the circle loss, got 1.0"),
    ("circle-class", {"gamma": 0.0}, "gamma must be a finite number > 0 for class-level Circle loss, got 0.0"),
])
def test_bad_hyper_parameters_are_refused_by_name(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(name, **kwargs)


@pytest.mark.parametrize("name", NEW_LEARNERS)
def test_gradients_are_finite_for_coincident_and_antipodal_embeddings(name):
    learner = make(name)
    if name in PROXY_LEARNERS:
        set_proxies(learner, [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    # Every embedding on a proxy's axis (cos = +-1 exactly), and pairs of identical embeddings.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    loss = learner.loss(batch_of(learner, x, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])),
                        torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NEW_LEARNERS)
def test_optimising_free_embeddings_lowers_each_loss_and_separates_the_classes(name):
    """A cheap check of each loss's gradient direction: 60 Adam steps on free embeddings (and proxies)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(5)
    x = torch.nn.Parameter(torch.randn(20, 8, generator=generator))
    torch.manual_seed(0)  # proxies are initialised from the global RNG: fix it, whatever ran before
    learner = make(name, num_classes=6, dim=8)
    optimizer = torch.optim.Adam([x, *learner.parameters()], lr=0.05)

    def loss(step: int) -> torch.Tensor:  # a new generator per step, as in training (N-pair draws its pairs)
        return learner.loss(batch_of(learner, x, labels, torch.tensor([4, 0, 2, 5])), torch.Generator().manual_seed(step))

    before = loss(0).item()
    for step in range(60):
        optimizer.zero_grad()
        loss(step).backward()
        optimizer.step()
    assert loss(0).item() < before
    # The nearest class mean under the learner's scoring distance is right for most points.
    with torch.no_grad():
        scores = -learner.scoring_distance(x, torch.stack([x[labels == c].mean(0) for c in range(4)]))
    assert (scores.argmax(1) == labels).float().mean() >= 0.9


# ----------------------------------------------------------------------------------------- against pytorch-metric-learning

N, DIM, CLASSES = 12, 5, 6
EPISODE_LABELS = torch.arange(4).repeat_interleave(3)
GLOBAL_IDS = torch.tensor([5, 0, 3, 1])  # classes 2 and 4 have a proxy but no embedding in the batch
GLOBAL_LABELS = GLOBAL_IDS[EPISODE_LABELS]
TOLERANCE = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture(scope="module")
def pml():
    return pytest.importorskip("pytorch_metric_learning")


def embeddings64(seed: int = 0) -> torch.Tensor:
    """``[N, DIM]`` float64 embeddings, not normalised."""
    return torch.randn(N, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def assert_same_value_and_gradient(ours, reference, ours_params=(), reference_params=(),
                                   z: torch.Tensor | None = None, transposed=()) -> None:
    """`ours(z)` and `reference(z)` agree in value and in gradient w.r.t. z (default: `embeddings64()`)
    and w.r.t. their parameters (`transposed`: indices of the parameters pml stores transposed)."""
    z = embeddings64() if z is None else z
    z, z_ref = z.clone().requires_grad_(), z.clone().requires_grad_()
    value, value_ref = ours(z), reference(z_ref)
    grads = torch.autograd.grad(value, [z, *ours_params])
    grads_ref = torch.autograd.grad(value_ref, [z_ref, *reference_params])
    torch.testing.assert_close(value, value_ref, **TOLERANCE)
    torch.testing.assert_close(grads[0], grads_ref[0], **TOLERANCE)
    for i, (grad, grad_ref) in enumerate(zip(grads[1:], grads_ref[1:])):
        torch.testing.assert_close(grad, grad_ref.T if i in transposed else grad_ref, **TOLERANCE)


def proxy_learner(cls, **kwargs):
    learner = cls(num_classes=CLASSES, dim=DIM, **kwargs).double()
    with torch.no_grad():  # proxies of unequal norms: the losses must normalise them
        learner.proxies.mul_(torch.linspace(0.5, 2.0, CLASSES, dtype=torch.float64)[:, None])
    return learner


def ours_on(learner, normalize_first: bool = False, generator_seed: int | None = None):
    def loss(z: torch.Tensor) -> torch.Tensor:
        x = F.normalize(z, dim=1) if normalize_first else z
        generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
        return learner.loss(batch_of(learner, x, EPISODE_LABELS, GLOBAL_IDS), generator)
    return loss


@pytest.mark.parametrize("learn_scale", [False, True])
def test_normface_matches_pml_normalized_softmax(pml, learn_scale):
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    ours = proxy_learner(NormFaceLearner, scale=16.0, learn_scale=learn_scale)
    reference = NormalizedSoftmaxLoss(CLASSES, DIM, temperature=1 / ours.scale.item()).double()
    with torch.no_grad():
        reference.W.copy_(ours.proxies.T)  # pml's W is [dim, num_classes]
    assert_same_value_and_gradient(ours_on(ours), lambda z: reference(z, GLOBAL_LABELS), [ours.proxies], [reference.W],
                                   transposed=(0,))


def test_cosface_matches_pml(pml):
    from pytorch_metric_learning.losses import CosFaceLoss

    ours = proxy_learner(CosFaceLearner, margin=0.35, scale=30.0)
    reference = CosFaceLoss(CLASSES, DIM, margin=0.35, scale=30.0).double()
    with torch.no_grad():
        reference.W.copy_(ours.proxies.T)
    assert_same_value_and_gradient(ours_on(ours), lambda z: reference(z, GLOBAL_LABELS), [ours.proxies], [reference.W],
                                   transposed=(0,))


def test_arcface_matches_pml_including_past_the_threshold(pml):
    from pytorch_metric_learning.losses import ArcFaceLoss

    ours = proxy_learner(ArcFaceLearner, margin=0.5, scale=64.0)
    reference = ArcFaceLoss(CLASSES, DIM, margin=math.degrees(0.5), scale=64.0).double()  # pml: degrees
    with torch.no_grad():
        reference.W.copy_(ours.proxies.T)
    # Embedding 0 about 175 degrees from its proxy, past pi - m: the threshold branch. (Not exactly 180:
    # there pml's gradient through acos is NaN and ours is finite, the one deliberate difference.)
    target = F.normalize(ours.proxies[GLOBAL_LABELS[0]].detach(), dim=0)
    z = embeddings64()
    z[0] = -target + 0.08 * F.normalize(z[0] - (z[0] @ target) * target, dim=0)
    angle = math.degrees(math.acos(F.cosine_similarity(z[0], target, dim=0).item()))
    assert 180 - math.degrees(0.5) < angle < 180
    for embeddings in (z, embeddings64(seed=1)):
        assert_same_value_and_gradient(ours_on(ours), lambda x: reference(x, GLOBAL_LABELS), [ours.proxies],
                                       [reference.W], z=embeddings, transposed=(0,))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 about pml's use of scipy.special.binom
def test_sphereface_without_annealing_matches_pml(pml):
    from pytorch_metric_learning.losses import SphereFaceLoss

    ours = proxy_learner(SphereFaceLearner, margin=4, lambda_start=0.0, lambda_min=0.0)
    reference = SphereFaceLoss(CLASSES, DIM, margin=4, scale=1).double()
    with torch.no_grad():
        reference.W.copy_(ours.proxies.T)
    assert_same_value_and_gradient(ours_on(ours), lambda z: reference(z, GLOBAL_LABELS), [ours.proxies], [reference.W],
                                   transposed=(0,))


def test_proxy_nca_matches_pml(pml):
    from pytorch_metric_learning.losses import ProxyNCALoss

    ours = proxy_learner(ProxyNCALearner, scale=9.0)
    reference = ProxyNCALoss(CLASSES, DIM, softmax_scale=9.0).double()
    with torch.no_grad():
        reference.proxies.copy_(ours.proxies)  # pml's proxies are [num_classes, dim], as ours
    assert_same_value_and_gradient(ours_on(ours), lambda z: reference(z, GLOBAL_LABELS), [ours.proxies],
                                   [reference.proxies])


def test_proxy_anchor_matches_pml(pml):
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    ours = proxy_learner(ProxyAnchorLearner, alpha=32.0, margin=0.1)
    reference = ProxyAnchorLoss(CLASSES, DIM, margin=0.1, alpha=32.0).double()
    with torch.no_grad():
        reference.proxies.copy_(ours.proxies)
    assert_same_value_and_gradient(ours_on(ours), lambda z: reference(z, GLOBAL_LABELS), [ours.proxies],
                                   [reference.proxies])


def test_lifted_structure_matches_pml(pml):
    from pytorch_metric_learning.losses import LiftedStructureLoss

    ours = LiftedStructureLearner(margin=1.0)
    reference = LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0)
    # Our loss sees the backbone's unit embeddings; pml normalises its input itself.
    assert_same_value_and_gradient(ours_on(ours, normalize_first=True),
                                   lambda z: reference(F.normalize(z, dim=1), EPISODE_LABELS))


@pytest.mark.parametrize("normalized", [False, True])
def test_n_pair_matches_pml_on_the_same_pairs(pml, normalized):
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NPairsLoss

    ours = NPairLearner(l2_reg=0.0)
    anchor, positive = one_pair_per_class(EPISODE_LABELS, torch.Generator().manual_seed(7))
    empty = torch.zeros(0, dtype=torch.long)
    # Sohn's raw inner product is pml with an unnormalised dot product; with --normalize, pml's default.
    reference = NPairsLoss() if normalized else NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    assert_same_value_and_gradient(ours_on(ours, normalize_first=normalized, generator_seed=7),
                                   lambda z: reference(z, EPISODE_LABELS, (anchor, positive, empty, empty)))


@pytest.mark.parametrize("mine", [True, False])
def test_multi_similarity_and_its_miner_match_pml(pml, mine):
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.miners import MultiSimilarityMiner as PmlMiner

    ours = MultiSimilarityLearner(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, mine=mine)
    reference, miner = MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5), PmlMiner(epsilon=0.1)

    def reference_loss(z: torch.Tensor) -> torch.Tensor:
        return reference(z, EPISODE_LABELS, miner(z, EPISODE_LABELS) if mine else None)

    assert_same_value_and_gradient(ours_on(ours), reference_loss)
    # The mined pairs themselves are pml's.
    z = embeddings64()
    a1, p, a2, n = miner(z, EPISODE_LABELS)
    positive, negative = MultiSimilarityMiner(0.1)(F.normalize(z) @ F.normalize(z).T, EPISODE_LABELS)
    assert sorted(map(list, zip(a1.tolist(), p.tolist()))) == positive.nonzero().tolist()
    assert sorted(map(list, zip(a2.tolist(), n.tolist()))) == negative.nonzero().tolist()
    assert 0 < int(negative.sum()) < int((EPISODE_LABELS[:, None] != EPISODE_LABELS).sum())  # it does mine


def test_circle_pair_form_matches_pml(pml):
    from pytorch_metric_learning.losses import CircleLoss

    ours, reference = CircleLearner(m=0.4, gamma=80.0), CircleLoss(m=0.4, gamma=80.0)
    assert_same_value_and_gradient(ours_on(ours), lambda z: reference(z, EPISODE_LABELS))


def test_circle_class_form_matches_pml_with_proxies_as_reference_embeddings(pml):
    from pytorch_metric_learning.losses import CircleLoss

    ours, reference = proxy_learner(ClassCircleLearner, m=0.4, gamma=80.0), CircleLoss(m=0.4, gamma=80.0)
    proxies = ours.proxies.detach().clone().requires_grad_()
    assert_same_value_and_gradient(
        ours_on(ours),
        lambda z: reference(z, GLOBAL_LABELS, ref_emb=proxies, ref_labels=torch.arange(CLASSES)),
        [ours.proxies], [proxies])


# ----------------------------------------------------------------------------------------- training through train()


@pytest.fixture(scope="module")
def omniglot_splits(data_root: Path):
    return load_splits("omniglot", None, data_root)


TINY = dict(ways=5, shots=1, train_ways=5, queries=2, eval_queries=2, episodes=3, val_every=3, val_episodes=2,
            test_episodes=2, checkpoint_every=3, seed=0, threads=1, backbone_args={"hidden": 16})  # 16 channels, 64-d embeddings


@pytest.mark.parametrize("name", NEW_LEARNERS)
def test_each_loss_trains_three_episodes_and_its_checkpoint_rebuilds(name, data_root, omniglot_splits, tmp_path,
                                                                     monkeypatch):
    # The learning curve (matplotlib) is most of a 3-episode run's time and is not under test here.
    monkeypatch.setattr("fewshot.training.runfiles.plot_curve", lambda *args, **kwargs: None, raising=False)
    config = TrainConfig(learner=name, data_root=str(data_root), output=str(tmp_path / "run"), **TINY)
    report = train(config, progress=False, splits=omniglot_splits)
    assert 0 <= report["results"][0]["accuracy"] <= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    model, state = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert type(model.learner) is LEARNERS[name] and state["spec"]["learner"] == name
    assert model.spec.metric == LEARNERS[name].default_distance
    if name in PROXY_LEARNERS:
        # One proxy per training class, saved and restored; unused when scoring novel classes.
        assert state["spec"]["num_classes"] == omniglot_splits.train.num_classes
        assert model.learner.proxies.shape == (omniglot_splits.train.num_classes, model.learner.dim)
        torch.testing.assert_close(model.learner.proxies, state["model"]["learner.proxies"])
    # Nearest prototype on novel classes from the rebuilt model.
    split = omniglot_splits.test
    support_x, support_y, query_x, query_y = split.episode_tensors(EpisodeSampler(split.labels, 2, 1, 1, seed=0).episode(0))
    logits = model.logits(support_x, support_y, query_x)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
