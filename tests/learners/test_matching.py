"""The matching networks learner: its attention rule (the training logits and the test-time rule), the full-context
embeddings on and off, training, checkpoints, the evaluator and the API; and that every other learner's logits stay
the nearest-prototype ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewshot.api import load
from fewshot.data.datasets import load_splits
from fewshot.distances import build_distance
from fewshot.evaluation import evaluate_model
from fewshot.learners import LEARNERS, MatchingLearner, prototype_logits
from fewshot.learners.matching import matching_log_probabilities
from fewshot.model.checkpoint import model_from_checkpoint, save_checkpoint
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.registry import call_with_injected
from tests.support.tiny_runs import episode_tensors, train_tiny

SUPPORT_Y = torch.tensor([0, 0, 1, 2, 2, 2])


def test_class_probabilities_are_the_attention_summed_over_a_class() -> None:
    similarities = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    attention = similarities.softmax(dim=1)
    expected = attention @ F.one_hot(SUPPORT_Y, 3).float()
    log_probabilities = matching_log_probabilities(similarities, SUPPORT_Y, 3)
    torch.testing.assert_close(log_probabilities.exp(), expected)
    with pytest.raises(ValueError, match=r"classes \[1\] have no support example"):
        matching_log_probabilities(similarities, torch.tensor([0, 0, 2, 2, 2, 2]), 3)


def test_without_fce_the_logits_are_the_log_attention_under_the_distance_and_train_with_nll() -> None:
    generator = torch.Generator().manual_seed(1)
    support, query = torch.randn(6, 8, generator=generator), torch.randn(5, 8, generator=generator)
    query_y = torch.tensor([0, 1, 2, 0, 1])
    learner = MatchingLearner(build_distance("cosine", 8))
    assert not learner.fce and learner.default_distance == "cosine"
    cosine = F.normalize(query, dim=1) @ F.normalize(support, dim=1).T
    expected = ((10.0 * cosine).softmax(dim=1) @ F.one_hot(SUPPORT_Y, 3).float()).log()
    output = learner(support, SUPPORT_Y, query, query_y)
    torch.testing.assert_close(output.logits, expected)
    torch.testing.assert_close(output.logits, learner.episode_logits(support, SUPPORT_Y, query, 3))
    torch.testing.assert_close(output.loss, F.nll_loss(expected, query_y))
    assert learner.scoring_distance is learner.distance  # search and clustering: the attention's similarity


@pytest.mark.parametrize("name", [name for name in LEARNERS if name not in ("matching", "relation")])
def test_every_other_learner_reports_the_nearest_prototype_logits_bit_for_bit(name: str) -> None:
    generator = torch.Generator().manual_seed(2)
    support, query = torch.randn(6, 8, generator=generator), torch.randn(5, 8, generator=generator)
    learner = call_with_injected(LEARNERS[name], {}, distance=build_distance(LEARNERS[name].default_distance, 8),
                                 num_classes=10, dim=8)
    output = learner(support, SUPPORT_Y, query, torch.tensor([0, 1, 2, 0, 1]), generator=torch.Generator(),
                     classes=torch.tensor([0, 4, 7]))
    assert torch.equal(output.logits, prototype_logits(learner.scoring_distance, support, SUPPORT_Y, query, 3))
    assert torch.equal(learner.episode_logits(support, SUPPORT_Y, query, 3), output.logits)


def test_full_context_embeddings_depend_on_the_whole_support_and_have_parameters() -> None:
    generator = torch.Generator().manual_seed(3)
    support, query = torch.randn(6, 8, generator=generator), torch.randn(5, 8, generator=generator)
    torch.manual_seed(0)
    learner = call_with_injected(LEARNERS["matching"], {"fce": True, "fce_steps": 3},
                                 distance=build_distance("cosine", 8), dim=8)
    assert learner.fce and learner.context.steps == 3
    assert {name.split(".")[0] for name, _ in learner.named_parameters()} == {"distance", "context"}
    plain = MatchingLearner(build_distance("cosine", 8))
    assert {name.split(".")[0] for name, _ in plain.named_parameters()} == {"distance"}  # the cosine scale only
    logits = learner.episode_logits(support, SUPPORT_Y, query, 3)
    assert logits.shape == (5, 3) and torch.allclose(logits.exp().sum(1), torch.ones(5))
    # Another support item of class 2 changes how the queries (and the other support items) are embedded.
    changed = support.clone()
    changed[5] += 1.0
    assert not torch.allclose(learner.episode_logits(changed, SUPPORT_Y, query, 3)[:, :2], logits[:, :2])


@pytest.mark.parametrize("fce", [False, True], ids=["plain", "fce"])
def test_matching_learns_clusters_with_fce_on_and_off(fce: bool) -> None:
    """A linear embedding and the learner, trained on 5-way 1-shot episodes of Gaussian classes in a space where
    a random direction dominates, beat chance clearly after a few dozen steps."""
    generator = torch.Generator().manual_seed(4)
    centres = torch.randn(40, 16, generator=generator)
    noise = torch.randn(16, generator=generator) * 8.0  # a nuisance direction the embedding must learn to ignore

    def episode(seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        classes = torch.randperm(40, generator=g)[:5]
        points = centres[classes].repeat_interleave(4, 0) + 0.5 * torch.randn(20, 16, generator=g)
        points = points + torch.randn(20, 1, generator=g) * noise
        labels = torch.arange(5).repeat_interleave(4)
        first = torch.arange(0, 20, 4)
        rest = torch.tensor([i for i in range(20) if i % 4])
        return points[first], labels[first], points[rest], labels[rest]

    torch.manual_seed(0)
    embed = torch.nn.Linear(16, 16)
    learner = call_with_injected(LEARNERS["matching"], {"fce": fce}, distance=build_distance("cosine", 16), dim=16)
    optimizer = torch.optim.Adam([*embed.parameters(), *learner.parameters()], lr=0.01)

    def accuracy() -> float:
        with torch.no_grad():
            return float(np.mean([(learner.episode_logits(embed(s), sy, embed(q), 5).argmax(1) == qy).float().mean()
                                  for s, sy, q, qy in map(episode, range(1000, 1020))]))

    before = accuracy()
    for step in range(40):
        s, sy, q, qy = episode(step)
        loss = learner(embed(s), sy, embed(q), qy).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert after > 0.6 and after > before + 0.1, (before, after)  # chance is 0.2


@pytest.mark.parametrize(("arguments", "message"), [
    ({"fce": "yes"}, "fce must be true or false, got 'yes'"),
    ({"fce_steps": 0}, "fce_steps .* must be a positive whole number, got 0"),
    ({"fce": True}, "with fce=True needs the embedding size dim .* got None"),
])
def test_bad_arguments_are_refused_clearly(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatchingLearner(**arguments)


def test_bad_command_line_arguments_are_refused_clearly() -> None:
    assert LEARNERS.parse_arguments("matching", ["fce=true", "fce_steps=2"], "--loss-arg") == {"fce": True,
                                                                                                 "fce_steps": 2}
    with pytest.raises(ValueError, match="--loss-arg fce='maybe' for learner 'matching'"):
        LEARNERS.parse_arguments("matching", ["fce=maybe"], "--loss-arg")
    with pytest.raises(ValueError, match="unknown --loss-arg 'steps' for learner 'matching'"):
        ModelSpec(learner="matching", learner_args={"steps": 2})


@pytest.fixture(scope="module")
def matching_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """best.pt of a tiny matching-networks run (Conv-4, cosine attention, no FCE)."""
    return train_tiny(tmp_path_factory.mktemp("matching") / "run", data_root, learner="matching",
                      backbone_args={"hidden": 32, "out_channels": 32})


@pytest.fixture(scope="module")
def test_split(data_root: Path):
    return load_splits("omniglot", root=data_root).test


def test_matching_networks_learn_and_the_evaluator_and_the_api_use_their_rule(matching_run: Path, test_split) -> None:
    model, _ = model_from_checkpoint(matching_run)
    accuracies = evaluate_model(model, test_split, 5, 1, 5, episodes=40, seed=1, progress=False)
    assert accuracies.mean() > 0.45, accuracies.mean()  # chance is 0.2
    support_x, support_y, query_x, query_y = episode_tensors(test_split, 2, shots=2)
    embeddings = model.embed(torch.cat([support_x, query_x]))
    expected = matching_log_probabilities(-model.learner.distance(embeddings[10:], embeddings[:10]), support_y, 5)
    torch.testing.assert_close(model.logits(support_x, support_y, query_x), expected)
    # The API's probabilities are the class attention itself (the logits are log probabilities).
    trained = load(matching_run)
    labels = [f"c{int(y)}" for y in support_y]
    probabilities, classes = trained.predict_proba(support_x, labels, query_x)
    assert classes == [f"c{i}" for i in range(5)]
    torch.testing.assert_close(probabilities, expected.exp())
    predicted = trained.classify(support_x, labels, query_x)
    assert np.mean([p == f"c{int(y)}" for p, y in zip(predicted, query_y)]) > 0.2
    result = trained.index(support_x, labels=labels, progress=False).search(query_x[:2], k=3)
    assert result.indices.shape == (2, 3)


def test_a_checkpoint_with_fce_rebuilds_identical_logits(matching_run: Path, test_split, tmp_path: Path) -> None:
    torch.manual_seed(0)
    built = FewShotModel(ModelSpec(learner="matching", learner_args={"fce": True, "fce_steps": 2},
                                   backbone_args={"hidden": 16, "out_channels": 16}))
    support_x, support_y, query_x, _ = episode_tensors(test_split, 1, shots=2)
    save_checkpoint(tmp_path / "fce.pt", {"spec": built.spec.to_dict(), "model": built.state_dict()})
    rebuilt, _ = model_from_checkpoint(tmp_path / "fce.pt")
    assert rebuilt.learner.fce and rebuilt.learner.fce_steps == 2
    assert torch.equal(rebuilt.logits(support_x, support_y, query_x), built.eval().logits(support_x, support_y, query_x))
    trained, _ = model_from_checkpoint(matching_run)
    again, _ = model_from_checkpoint(matching_run)
    assert torch.equal(trained.logits(support_x, support_y, query_x), again.logits(support_x, support_y, query_x))
