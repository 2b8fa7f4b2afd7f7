"""The inductive test-time heads on planted embeddings and on a miniature Omniglot model: each beats chance, the
prototype head is the learner's own rule, fine-tuning the backbone leaves the model as it was, bad arguments are
refused clearly."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.heads import HEADS, Head, HeadContext, build_head, episode_generator
from fewshot.model.network import FewShotModel, ModelSpec
from tests.support.planted_features import planted_episode

#: The inductive heads on embeddings, with arguments that keep them quick.
EMBEDDING_HEADS = [("prototype", {}), ("simpleshot", {}), ("simpleshot", {"norm": "L2N"}),
                   ("simpleshot", {"norm": "UN"}), ("logistic", {}), ("finetune", {}),
                   ("finetune", {"cosine": True})]


@pytest.fixture(scope="module")
def model() -> FewShotModel:
    return FewShotModel(ModelSpec()).eval()


def context(model: FewShotModel, episode: int = 0, base_mean: torch.Tensor | None = None) -> HeadContext:
    mean = None if base_mean is None else (lambda: base_mean)
    return HeadContext(model.learner, episode_generator(0, episode), mean, model)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


@pytest.mark.parametrize(("name", "arguments"), EMBEDDING_HEADS, ids=lambda v: str(v))
def test_each_inductive_head_beats_chance_on_planted_embeddings(name: str, arguments: dict,
                                                                model: FewShotModel) -> None:
    head = build_head(name, **arguments)
    assert not head.transductive and not head.needs_images
    scores = []
    for seed in range(10):
        # Positive features away from the origin: centring on their mean (the base mean) is what CL2N is for.
        episode = planted_episode(ways=5, shots=1, queries=10, dim=16, seed=seed, noise=0.6, non_negative=True)
        base_mean = torch.full((16,), 0.8)
        logits = head.logits(episode.support, episode.support_labels, episode.query, 5,
                             context(model, seed, base_mean))
        assert logits.shape == (50, 5) and torch.isfinite(logits).all()
        scores.append(accuracy(logits, episode.query_labels))
    assert sum(scores) / len(scores) > 0.6  # chance: 0.2


def test_the_prototype_head_is_the_learners_own_rule(model: FewShotModel) -> None:
    episode = planted_episode(ways=5, shots=3, queries=4, dim=16, seed=1)
    own = model.learner.episode_logits(episode.support, episode.support_labels, episode.query, 5)
    head = build_head("prototype").logits(episode.support, episode.support_labels, episode.query, 5, context(model))
    assert torch.equal(own, head)


def test_simpleshot_centres_on_the_base_mean_and_refuses_without_it(model: FewShotModel) -> None:
    episode = planted_episode(ways=3, shots=2, queries=3, dim=8, seed=2)
    cl2n, l2n = build_head("simpleshot"), build_head("simpleshot", norm="L2N")
    assert cl2n.needs_base_mean and not l2n.needs_base_mean
    centred = cl2n.logits(episode.support, episode.support_labels, episode.query, 3,
                          context(model, base_mean=torch.zeros(8)))
    # Centred on a zero mean, CL2N is L2N.
    assert torch.allclose(centred, l2n.logits(episode.support, episode.support_labels, episode.query, 3,
                                              context(model)))
    with pytest.raises(ValueError, match="mean embedding of the checkpoint's training classes"):
        cl2n.logits(episode.support, episode.support_labels, episode.query, 3, context(model))


def test_seeded_heads_give_the_same_scores_for_the_same_episode_number(model: FewShotModel) -> None:
    episode = planted_episode(ways=5, shots=1, queries=5, dim=16, seed=3)
    head = build_head("finetune", steps=20)
    first, again, other = (head.logits(episode.support, episode.support_labels, episode.query, 5, context(model, e))
                           for e in (4, 4, 5))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # another episode number: another initialisation
    logistic = build_head("logistic")
    assert torch.equal(*(logistic.logits(episode.support, episode.support_labels, episode.query, 5, context(model, e))
                         for e in (0, 1)))  # deterministic whatever the generator


def images(seed: int, ways: int = 5, shots: int = 1, queries: int = 3) -> tuple[torch.Tensor, ...]:
    """Planted images: each class a fixed random pattern plus noise."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(ways, 1, 28, 28, generator=generator)
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_y = torch.arange(ways).repeat_interleave(queries)
    noisy = (lambda y: (patterns[y] + 0.3 * torch.rand(len(y), 1, 28, 28, generator=generator)).clamp(0, 1))
    return noisy(support_y), support_y, noisy(query_y), query_y


def test_finetune_backbone_beats_chance_and_leaves_the_model_unchanged(model: FewShotModel) -> None:
    head = build_head("finetune-backbone", steps=5, lr=0.01)
    assert head.needs_images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    support_x, support_y, query_x, query_y = images(0)
    logits = head.logits_from_images(support_x, support_y, query_x, 5, context(model))
    assert accuracy(logits, query_y) > 0.6
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_finetune_backbone_without_steps_is_the_prototype_rule(model: FewShotModel) -> None:
    support_x, support_y, query_x, _ = images(1)
    with torch.no_grad():
        embedded = model.embed(torch.cat([support_x, query_x]))
        own = model.learner.episode_logits(embedded[:5], support_y, embedded[5:], 5)
    start = build_head("finetune-backbone", steps=0).logits_from_images(support_x, support_y, query_x, 5,
                                                                         context(model))
    # Squared Euclidean nearest prototype up to a per-query constant: the same predictions.
    assert torch.equal(start.argmax(dim=1), own.argmax(dim=1))


@pytest.mark.parametrize(("name", "arguments", "message"), [
    ("nope", {}, "unknown head 'nope'; valid names: prototype"),
    ("simpleshot", {"nrm": "L2N"}, "unknown --head-arg 'nrm' for head 'simpleshot'; valid: norm"),
    ("simpleshot", {"norm": "L3N"}, "unknown SimpleShot norm 'L3N'; expected one of UN, L2N, CL2N"),
    ("logistic", {"C": 0.0}, "logistic C must be positive, got 0.0"),
    ("finetune", {"steps": -1}, "steps must be a whole number >= 0, got -1"),
    ("finetune-backbone", {"init": "zeros"}, "unknown finetune-backbone init 'zeros'"),
])
def test_bad_head_names_and_arguments_are_refused_clearly(name: str, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_head(name, **arguments)


def test_every_inductive_head_is_registered_as_a_head() -> None:
    for name in ("prototype", "simpleshot", "logistic", "finetune", "finetune-backbone"):
        assert isinstance(build_head(name), Head) and name in HEADS
