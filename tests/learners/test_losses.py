"""Distances, miners and learners against values worked out by hand, then training on real Omniglot."""

import math

import numpy as np
import pytest
import torch

from fewshot.backbones import Conv4
from fewshot.distances import (
    DISTANCES,
    Cosine,
    Mahalanobis,
    SquaredEuclidean,
    build_distance,
    euclidean,
)
from fewshot.learners import (
    LEARNERS,
    PrototypicalLearner,
    SiameseLearner,
    TripletLearner,
    build_learner,
    contrastive_loss,
    prototypes,
)
from fewshot.learners.miners import (
    MINERS,
    BatchAllMiner,
    BatchHardMiner,
    DistanceWeightedMiner,
    SemiHardMiner,
    build_miner,
)


# Four points in 2-D (on the x axis, so distances are easy to read) and their classes:
#   x0 = (0, 0) class 0,  x1 = (1, 0) class 0,  x2 = (1.5, 0) class 1,  x3 = (4, 0) class 1.
# Distances: d01 = 1, d02 = 1.5, d03 = 4, d12 = 0.5, d13 = 3, d23 = 2.5.
POINTS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [4.0, 0.0]])
LABELS = torch.tensor([0, 0, 1, 1])
DIST = torch.tensor(
    [
        [0.0, 1.0, 1.5, 4.0],
        [1.0, 0.0, 0.5, 3.0],
        [1.5, 0.5, 0.0, 2.5],
        [4.0, 3.0, 2.5, 0.0],
    ]
)


def as_list(triplets):
    return list(zip(*(t.tolist() for t in triplets)))


# ---------------------------------------------------------------------------------------- distances


def test_euclidean_matches_hand_distances_with_finite_gradient_at_zero():
    torch.testing.assert_close(euclidean(POINTS, POINTS), DIST)
    torch.testing.assert_close(SquaredEuclidean()(POINTS, POINTS), DIST**2)
    x = torch.zeros(3, 4, requires_grad=True)
    euclidean(x, x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cosine_is_minus_scaled_cosine():
    distance = Cosine(temperature=10.0)
    x = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    # cosines: 1, 0, -1, 1/sqrt(2)
    expected = torch.tensor([[-10.0, 0.0, 10.0, -10.0 / math.sqrt(2)]])
    torch.testing.assert_close(distance(x, y), expected)
    assert [name for name, _ in distance.named_parameters()] == ["scale"]
    assert list(Cosine(learn_temperature=False).parameters()) == []


@pytest.mark.parametrize("kind", ["full", "lowrank", "diag"])
def test_mahalanobis_identity_init_is_squared_euclidean(kind):
    dim = 5
    distance = {
        "full": Mahalanobis(dim),
        "lowrank": Mahalanobis(dim, rank=dim),
        "diag": Mahalanobis(dim, diagonal=True),
    }[kind]
    x, y = torch.randn(4, dim), torch.randn(3, dim)
    torch.testing.assert_close(distance(x, y), SquaredEuclidean()(x, y))


def test_mahalanobis_lowrank_init_is_the_first_identity_rows():
    distance = Mahalanobis(4, rank=2)
    torch.testing.assert_close(distance.L.detach(), torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(distance.transform(x), torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize(("rank", "diagonal"), [(None, False), (3, False), (None, True)])
def test_mahalanobis_random_L_equals_direct_formula(rank, diagonal):
    dim = 6
    distance = Mahalanobis(dim, rank=rank, diagonal=diagonal)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        distance.L.copy_(torch.randn(distance.L.shape, generator=generator))
    x, y = torch.randn(5, dim, generator=generator), torch.randn(4, dim, generator=generator)
    L = torch.diag(distance.L.detach()) if diagonal else distance.L.detach()
    direct = torch.stack([torch.stack([(L @ (xi - yj)).pow(2).sum() for yj in y]) for xi in x])
    torch.testing.assert_close(distance(x, y), direct, rtol=1e-4, atol=1e-4)
    # M = L^T L form of the same distance.
    diff = x[:, None, :] - y[None, :, :]
    quadratic_form = torch.einsum("nmi,ij,nmj->nm", diff, L.T @ L, diff)
    torch.testing.assert_close(distance(x, y), quadratic_form, rtol=1e-4, atol=1e-4)


def test_mahalanobis_bad_arguments():
    with pytest.raises(ValueError, match=r"rank must be in \[1, dim=4\], got 5"):
        Mahalanobis(4, rank=5)
    with pytest.raises(ValueError, match="not both"):
        Mahalanobis(4, rank=2, diagonal=True)
    with pytest.raises(ValueError, match=r"expected embeddings \[n, 4\]"):
        Mahalanobis(4)(torch.zeros(2, 3), torch.zeros(2, 3))


def test_build_distance_names():
    assert isinstance(build_distance("euclidean", 8), SquaredEuclidean)
    assert isinstance(build_distance("cosine", 8, temperature=5.0), Cosine)
    assert build_distance("mahalanobis", 8).L.shape == (8, 8)
    assert build_distance("mahalanobis-diag", 8).L.shape == (8,)
    assert build_distance("mahalanobis-lowrank", 8).L.shape == (2, 8)
    assert build_distance("mahalanobis-lowrank", 8, rank=3).L.shape == (3, 8)
    with pytest.raises(ValueError, match="unknown distance 'manhattan'.*euclidean, cosine, mahalanobis"):
        build_distance("manhattan", 8)
    assert set(DISTANCES) == {"euclidean", "cosine", "mahalanobis", "mahalanobis-diag", "mahalanobis-lowrank"}


# ------------------------------------------------------------------------------------------- miners


def test_batch_all_miner():
    # Every (anchor, positive) pair with each of the two negatives.
    assert as_list(BatchAllMiner()(DIST, LABELS)) == [
        (0, 1, 2), (0, 1, 3), (1, 0, 2), (1, 0, 3), (2, 3, 0), (2, 3, 1), (3, 2, 0), (3, 2, 1),
    ]


def test_batch_hard_miner():
    # Each anchor has one positive; nearest negatives: x0 -> x2 (1.5 < 4), x1 -> x2 (0.5 < 3),
    # x2 -> x1 (0.5 < 1.5), x3 -> x1 (3 < 4).
    assert as_list(BatchHardMiner()(DIST, LABELS)) == [(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]


def test_batch_hard_miner_takes_the_farthest_positive():
    # Class 0 = {x0, x1, x2}, class 1 = {x3}: anchor x0's positives are at 1 and 1.5.
    labels = torch.tensor([0, 0, 0, 1])
    assert as_list(BatchHardMiner()(DIST, labels))[0] == (0, 2, 3)


def test_semi_hard_miner():
    # margin 1.8, band d(a,p) < d(a,n) < d(a,p) + 1.8:
    #   (0,1): band (1, 2.8): x2 at 1.5 yes, x3 at 4 no          -> (0, 1, 2)
    #   (1,0): band (1, 2.8): x2 at 0.5 no, x3 at 3 no           -> none
    #   (2,3): band (2.5, 4.3): x0 at 1.5 no, x1 at 0.5 no       -> none
    #   (3,2): band (2.5, 4.3): x0 at 4 yes, x1 at 3 yes, nearest -> (3, 2, 1)
    assert as_list(SemiHardMiner(margin=1.8)(DIST, LABELS)) == [(0, 1, 2), (3, 2, 1)]
    # margin 0.4: (0,1) band (1, 1.4) and (3,2) band (2.5, 2.9) are empty.
    assert as_list(SemiHardMiner(margin=0.4)(DIST, LABELS)) == []


# Distances between 4 (notionally unit) embeddings, classes [0, 0, 1, 1]; cutoff 0.5, nonzero 1.4.
SPHERE_DIST = torch.tensor(
    [
        [0.0, 0.3, 0.2, 1.0],
        [0.3, 0.0, 1.6, 0.8],
        [0.2, 1.6, 0.0, 0.4],
        [1.0, 0.8, 0.4, 0.0],
    ]
)


def test_distance_weighted_probabilities_in_3d():
    # In R^3, q(d) ∝ d, so the weight is 1 / max(d, 0.5), and 0 when d >= 1.4:
    #   anchor 0: x2 (0.2 -> 0.5) weight 2, x3 weight 1            -> 2/3, 1/3
    #   anchor 1: x2 at 1.6 weight 0, x3 weight 1/0.8              -> 0, 1
    #   anchor 2: x0 (0.2 -> 0.5) weight 2, x1 at 1.6 weight 0     -> 1, 0
    #   anchor 3: x0 weight 1, x1 weight 1.25                      -> 4/9, 5/9
    expected = torch.tensor(
        [
            [0.0, 0.0, 2 / 3, 1 / 3],
            [0.0, 0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0],
            [4 / 9, 5 / 9, 0.0, 0.0],
        ]
    )
    probabilities = DistanceWeightedMiner().negative_probabilities(SPHERE_DIST, LABELS, embedding_dim=3)
    torch.testing.assert_close(probabilities, expected)


def test_distance_weighted_probabilities_in_4d():
    # In R^4, 1/q(d) = 1 / (d^2 sqrt(1 - d^2/4)):
    #   d = 0.5 (clipped 0.2): 1 / (0.25 * 0.968246) = 4.131182;  d = 1: 1 / 0.866025 = 1.154701
    #   d = 0.8: 1 / (0.64 * 0.916515) = 1.704833
    # anchor 0: 4.131182 / 5.285883 = 0.781554;  anchor 3: 1.154701 / 2.859534 = 0.403810.
    probabilities = DistanceWeightedMiner().negative_probabilities(SPHERE_DIST, LABELS, embedding_dim=4)
    torch.testing.assert_close(probabilities[0], torch.tensor([0.0, 0.0, 0.781554, 0.218446]))
    torch.testing.assert_close(probabilities[3], torch.tensor([0.403810, 0.596190, 0.0, 0.0]))


def test_distance_weighted_sampling_follows_probabilities_and_generator():
    miner = DistanceWeightedMiner(embedding_dim=3)
    generator = torch.Generator().manual_seed(0)
    draws = [miner(SPHERE_DIST, LABELS, generator) for _ in range(1000)]
    for anchor, positive, negative in draws:
        assert anchor.tolist() == [0, 1, 2, 3] and positive.tolist() == [1, 0, 3, 2]
        assert negative[1] == 3 and negative[2] == 0
    negatives = torch.stack([negative for _, _, negative in draws])
    # Binomial standard deviations at 1000 draws are about 0.015: allow 3.5 of them.
    assert abs((negatives[:, 0] == 2).float().mean().item() - 2 / 3) < 0.05
    assert abs((negatives[:, 3] == 1).float().mean().item() - 5 / 9) < 0.05
    # Same seed, same triplets: sampling depends only on the generator.
    replay = torch.Generator().manual_seed(0)
    assert torch.equal(torch.stack([miner(SPHERE_DIST, LABELS, replay)[2] for _ in range(50)]), negatives[:50])


def test_distance_weighted_falls_back_to_uniform_and_needs_unit_embeddings():
    # Both negatives of anchor 0 are beyond nonzero_loss_cutoff: uniform over them.
    dist = torch.tensor([[0.0, 0.1, 1.5, 1.9], [0.1, 0.0, 1.5, 1.9], [1.5, 1.5, 0.0, 0.1], [1.9, 1.9, 0.1, 0.0]])
    probabilities = DistanceWeightedMiner().negative_probabilities(dist, LABELS, embedding_dim=8)
    torch.testing.assert_close(probabilities[0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="L2-normalised"):
        DistanceWeightedMiner(embedding_dim=3)(DIST, LABELS)
    with pytest.raises(ValueError, match="embedding dimension"):
        DistanceWeightedMiner()(SPHERE_DIST, LABELS)


def test_build_miner_names_and_bad_input():
    assert isinstance(build_miner("semi-hard", margin=0.5), SemiHardMiner)
    assert set(MINERS) == {"batch-all", "batch-hard", "semi-hard", "distance-weighted"}
    with pytest.raises(ValueError, match="unknown miner 'hardest'.*batch-all, batch-hard"):
        build_miner("hardest")
    with pytest.raises(ValueError, match="labels must have shape"):
        BatchAllMiner()(DIST, LABELS[:3])


# ----------------------------------------------------------------------------------------- learners

# The same points as an episode: support x0 (class 0), x2 (class 1); query x1, x3.
SUPPORT, SUPPORT_LABELS = POINTS[[0, 2]], LABELS[[0, 2]]
QUERY, QUERY_LABELS = POINTS[[1, 3]], LABELS[[1, 3]]


def test_prototypes_and_protonet_loss():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(prototypes(support, labels, 2), torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    # Query (1, 1): squared distances 1 and 5 to the prototypes; loss = log(1 + e^-4).
    output = PrototypicalLearner()(support, labels, torch.tensor([[1.0, 1.0]]), torch.tensor([0]))
    torch.testing.assert_close(output.logits, torch.tensor([[-1.0, -5.0]]))
    torch.testing.assert_close(output.loss, torch.tensor(math.log(1 + math.exp(-4))))


def test_contrastive_loss():
    # margin 2. Positive pairs d01 = 1, d23 = 2.5: mean d^2 = (1 + 6.25) / 2 = 3.625.
    # Negative pairs 1.5, 4, 0.5, 3: mean max(0, 2 - d)^2 = (0.25 + 0 + 2.25 + 0) / 4 = 0.625.
    # Loss = 0.5 * 3.625 + 0.5 * 0.625 = 2.125.
    torch.testing.assert_close(contrastive_loss(POINTS, LABELS, margin=2.0), torch.tensor(2.125))
    output = SiameseLearner(margin=2.0)(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS)
    torch.testing.assert_close(output.loss, torch.tensor(2.125))
    # Euclidean nearest prototype: x1 is 1 from x0 and 0.5 from x2; x3 is 4 and 2.5 away.
    torch.testing.assert_close(output.logits, torch.tensor([[-1.0, -0.5], [-4.0, -2.5]]))


@pytest.mark.parametrize(
    ("miner", "reduction", "margin", "expected"),
    [
        # Batch-all, margin 0.2: the 8 triplets' losses are 0, 0, 0.7, 0, 1.2, 2.2, 0, 0 (sum 4.1).
        ("batch-all", "mean", 0.2, 4.1 / 8),
        ("batch-all", "mean-nonzero", 0.2, 4.1 / 3),
        # Batch-hard: (0,1,2) 1 - 1.5 + 0.2 -> 0, (1,0,2) 0.7, (2,3,1) 2.2, (3,2,1) 2.5 - 3 + 0.2 -> 0.
        ("batch-hard", "mean", 0.2, (0.7 + 2.2) / 4),
        # Semi-hard, margin 1.8: (0,1,2) 1 - 1.5 + 1.8 = 1.3 and (3,2,1) 2.5 - 3 + 1.8 = 1.3.
        ("semi-hard", "mean", 1.8, 1.3),
    ],
)
def test_triplet_loss(miner, reduction, margin, expected):
    learner = TripletLearner(margin=margin, miner=miner, reduction=reduction)
    output = learner(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS)
    torch.testing.assert_close(output.loss, torch.tensor(expected))
    torch.testing.assert_close(output.logits, torch.tensor([[-1.0, -0.5], [-4.0, -2.5]]))


def test_triplet_without_triplets_gives_zero_loss_that_backpropagates():
    support = SUPPORT.clone().requires_grad_()
    output = TripletLearner(margin=0.4)(support, SUPPORT_LABELS, QUERY, QUERY_LABELS)
    assert output.loss.item() == 0.0
    output.loss.backward()
    assert torch.equal(support.grad, torch.zeros_like(support))


@pytest.mark.parametrize("name", ["protonet", "siamese", "triplet"])
def test_gradients_are_finite_for_coincident_embeddings(name):
    support = torch.zeros(4, 3, requires_grad=True)
    query = torch.zeros(2, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    output = build_learner(name, None, **({"miner": "batch-all"} if name == "triplet" else {}))(
        support, labels, query, torch.tensor([0, 1])
    )
    output.loss.backward()
    assert torch.isfinite(support.grad).all() and torch.isfinite(query.grad).all()


def test_build_learner_and_bad_episodes():
    distance = Mahalanobis(2)
    learner = build_learner("protonet", distance)
    assert learner.distance is distance and [p.shape for p in learner.parameters()] == [(2, 2)]
    assert isinstance(build_learner("triplet", None, margin=0.5, miner="batch-hard"), TripletLearner)
    assert {"protonet", "siamese", "triplet"} <= set(LEARNERS) == {"protonet", "siamese", "triplet", "normface", "cosface", "arcface", "sphereface", "proxy-nca", "proxy-anchor", "lifted-structure", "n-pair", "multi-similarity", "circle", "circle-class", "matching", "relation"}
    with pytest.raises(ValueError, match="unknown learner 'maml'.*protonet, siamese, triplet"):
        build_learner("maml", None)
    # Margin losses take their distance injected, but only a squared metric (they train its square root).
    assert isinstance(build_learner("siamese", SquaredEuclidean()).distance, SquaredEuclidean)
    with pytest.raises(ValueError, match="does not accept a Cosine distance"):
        build_learner("siamese", Cosine())
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        PrototypicalLearner()(SUPPORT, torch.tensor([0, 2]), QUERY, QUERY_LABELS)
    with pytest.raises(ValueError, match=r"query labels must lie in 0..1"):
        PrototypicalLearner()(SUPPORT, SUPPORT_LABELS, QUERY, torch.tensor([0, 2]))


# ------------------------------------------------------------------------------ training on Omniglot


def omniglot_episode(split, by_class, rng, ways=5, shots=5, queries=5):
    """A ways-way episode from real Omniglot: (support, support_labels, query, query_labels) images."""
    classes = rng.choice(len(by_class), ways, replace=False)
    picks = np.stack([rng.choice(by_class[c], shots + queries, replace=False) for c in classes])
    images = split.to_float(split.gather(picks.reshape(-1))).view(ways, shots + queries, 1, 28, 28)
    support = images[:, :shots].reshape(-1, 1, 28, 28)
    query = images[:, shots:].reshape(-1, 1, 28, 28)
    labels = torch.arange(ways)
    return support, labels.repeat_interleave(shots), query, labels.repeat_interleave(queries)


@pytest.mark.parametrize(
    ("name", "kwargs", "normalize", "distance"),
    [
        ("protonet", {}, False, None),
        ("protonet", {}, False, "mahalanobis"),
        ("siamese", {}, True, None),
        ("triplet", {"miner": "semi-hard"}, True, None),
        ("triplet", {"miner": "batch-hard"}, True, None),
        ("triplet", {"miner": "distance-weighted"}, True, None),
    ],
    ids=[
        "protonet",
        "protonet-mahalanobis",
        "siamese",
        "triplet-semi-hard",
        "triplet-batch-hard",
        "triplet-distance-weighted",
    ],
)
def test_learner_trains_on_omniglot(omniglot_store, name, kwargs, normalize, distance):
    """30 Adam steps on 5-way 5-shot 5-query episodes lower the loss on fixed episodes and raise accuracy."""
    split = omniglot_store.split("train")
    by_class = np.split(np.argsort(split.labels, kind="stable"), np.cumsum(np.bincount(split.labels))[:-1])
    torch.manual_seed(0)
    backbone = Conv4(in_channels=1, hidden=32, out_channels=32, normalize=normalize)
    learner = build_learner(name, build_distance(distance, 32) if distance else None, **kwargs)
    optimizer = torch.optim.Adam([*backbone.parameters(), *learner.parameters()], lr=1e-3)
    fixed = [omniglot_episode(split, by_class, np.random.default_rng(100 + i)) for i in range(4)]

    def evaluate():
        with torch.no_grad():
            outputs = [
                (learner(backbone(s), sl, backbone(q), ql, torch.Generator().manual_seed(1)), ql)
                for s, sl, q, ql in fixed
            ]
        loss = np.mean([out.loss.item() for out, _ in outputs])
        accuracy = np.mean([(out.logits.argmax(1) == ql).float().mean().item() for out, ql in outputs])
        return loss, accuracy

    loss_before, accuracy_before = evaluate()
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    for _ in range(30):
        support, support_labels, query, query_labels = omniglot_episode(split, by_class, rng)
        output = learner(backbone(support), support_labels, backbone(query), query_labels, generator)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    loss_after, accuracy_after = evaluate()
    assert loss_after < 0.9 * loss_before, (loss_before, loss_after)
    assert accuracy_after > accuracy_before, (accuracy_before, accuracy_after)
