"""The relation network learner: its relation module, the injected feature maps, its losses, training, checkpoints,
the evaluator, the API, and the clear refusals of the uses that need a metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fewshot.learners.relation as relation
from fewshot.api import load
from fewshot.data.datasets import load_splits
from fewshot.evaluation import embedding_metrics, evaluate_model
from fewshot.learners import LEARNERS, RelationLearner
from fewshot.learners.relation import RelationModule, RelationScore
from fewshot.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.registry import call_with_injected
from tests.support.tiny_runs import episode_tensors, train_tiny


def relation_spec(**learner_args) -> ModelSpec:
    return ModelSpec(learner="relation", backbone_args={"pools": 2, "hidden": 16, "out_channels": 16},
                     learner_args=learner_args)


def concatenated_relation(module: RelationModule, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The relation module written as the paper does: one convolution over each concatenated pair."""
    n, m = len(queries), len(classes)
    pairs = torch.cat([classes[None].expand(n, -1, -1, -1, -1), queries[:, None].expand(-1, m, -1, -1, -1)], dim=2)
    x = F.relu(F.max_pool2d(module.norm1(module.conv1(pairs.flatten(0, 1))), 2))
    x = F.relu(F.max_pool2d(module.norm2(module.conv2(x)), 2))
    return module.fc2(F.relu(module.fc1(x.flatten(1)))).view(n, m)


def test_the_relation_module_equals_a_convolution_over_concatenated_maps_in_blocks_or_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    module = RelationModule((16, 7, 7), channels=8, hidden=4).eval()
    classes, queries = torch.randn(5, 16, 7, 7), torch.randn(12, 16, 7, 7)
    with torch.no_grad():
        whole = module(classes, queries)
        torch.testing.assert_close(whole, concatenated_relation(module, classes, queries), rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(relation, "PAIR_BLOCK_ELEMENTS", 8 * 49 * 3)  # blocks of 3 pairs
        torch.testing.assert_close(module(classes, queries), whole, rtol=1e-6, atol=1e-6)
    assert module.fc1.in_features == 8  # 7x7 -> 3x3 -> 1x1, as in the paper


def test_the_model_injects_the_backbone_feature_maps_and_a_vector_is_a_1x1_map() -> None:
    assert FewShotModel(ModelSpec(learner="relation", backbone_args={"pools": 2})).learner.map_shape == (64, 7, 7)
    pools3 = FewShotModel(ModelSpec(learner="relation", backbone_args={"pools": 3})).learner
    assert pools3.map_shape == (64, 3, 3) and pools3.relation.fc1.in_features == 64  # 3x3 -> 1x1, then no pool
    flat = call_with_injected(LEARNERS["relation"], {}, dim=16)  # no feature_shape: a vector
    assert flat.map_shape == (16, 1, 1) and not flat.relation.pool1
    output = flat(torch.randn(4, 16), torch.tensor([0, 0, 1, 1]), torch.randn(2, 16), torch.tensor([0, 1]))
    assert torch.isfinite(output.loss) and output.logits.shape == (2, 2)


def test_losses_logits_and_support_pooling_are_as_documented() -> None:
    torch.manual_seed(0)
    support, query = torch.randn(4, 16 * 7 * 7), torch.randn(6, 16 * 7 * 7)
    support_y, query_y = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 0, 1])
    mse = RelationLearner(feature_shape=(16, 7, 7))
    ce = RelationLearner(feature_shape=(16, 7, 7), loss="ce")
    ce.load_state_dict(mse.state_dict())
    sums = support.view(2, 2, -1).sum(1)
    raw = mse.relation_logits(sums, query)  # training mode: batch statistics of the 12 pairs
    out = mse(support, support_y, query, query_y)
    torch.testing.assert_close(out.logits, F.logsigmoid(raw))
    torch.testing.assert_close(out.loss, ((raw.sigmoid() - F.one_hot(query_y, 2)) ** 2).mean())
    torch.testing.assert_close(ce(support, support_y, query, query_y).loss, F.cross_entropy(F.logsigmoid(raw), query_y))
    # Forward's logits are the test-time rule, and the scoring distance orders as the relation score does.
    mse.eval()
    with torch.no_grad():
        logits = mse.episode_logits(support, support_y, query, 2)
        torch.testing.assert_close(logits, -mse.scoring_distance(query, sums))
        mean = RelationLearner(feature_shape=(16, 7, 7), support="mean").eval()
        mean.load_state_dict(mse.state_dict())
        torch.testing.assert_close(mean.episode_logits(support, support_y, query, 2),
                                   F.logsigmoid(mse.relation_logits(sums / 2, query)))
        assert (mse.scoring_distance(query, sums) >= 0).all()


@pytest.mark.parametrize(("arguments", "message"), [
    ({"loss": "l1"}, "loss must be one of mse, ce, got 'l1'"),
    ({"support": "max"}, "support must be one of sum, mean"),
    ({"channels": 0}, "channels must be a positive whole number, got 0"),
    ({"hidden": 2.5}, "hidden must be a positive whole number, got 2.5"),
    ({"feature_shape": (16, 7, 7), "dim": 100}, r"feature_shape \(16, 7, 7\) holds 784 values but the embedding has "
                                                r"dim=100"),
    ({"feature_shape": (16, 0, 7)}, "feature_shape must be"),
    ({}, "needs the backbone's feature_shape"),
])
def test_bad_arguments_are_refused_clearly(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RelationLearner(**arguments)


def test_bad_settings_and_embeddings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="--metric 'cosine' does not suit the relation learner; it accepts: euclidean"):
        ModelSpec(learner="relation", metric="cosine")
    with pytest.raises(ValueError, match="unknown --loss-arg 'margin' for learner 'relation'"):
        ModelSpec(learner="relation", learner_args={"margin": 0.1})
    with pytest.raises(ValueError, match="relation learner loss must be one of mse, ce, got 'l1'"):
        FewShotModel(relation_spec(loss="l1"))
    learner = RelationLearner(feature_shape=(16, 7, 7))
    with pytest.raises(ValueError, match=r"compares \(16, 7, 7\) feature maps: expected embeddings \[n, 784\], got "
                                         r"\(4, 64\)"):
        learner(torch.randn(4, 64), torch.tensor([0, 0, 1, 1]), torch.randn(2, 64), torch.tensor([0, 1]))


@pytest.fixture(scope="module")
def relation_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """best.pt of a tiny relation run on Conv-4 maps (pools=2, as in the paper)."""
    with pytest.warns(UserWarning, match="could not calibrate.*relation learner"):
        return train_tiny(tmp_path_factory.mktemp("relation") / "run", data_root, learner="relation",
                          backbone_args={"pools": 2, "hidden": 32, "out_channels": 32})


@pytest.fixture(scope="module")
def test_split(data_root: Path):
    return load_splits("omniglot", root=data_root).test


def test_a_relation_network_learns_and_the_evaluator_scores_it_by_relation(relation_run: Path, test_split) -> None:
    model, _ = model_from_checkpoint(relation_run)
    accuracies = evaluate_model(model, test_split, 5, 1, 5, episodes=40, seed=1, progress=False)
    assert accuracies.mean() > 0.45, accuracies.mean()  # chance is 0.2
    # The evaluator's rule is the learner's: its accuracy on an episode is that of FewShotModel.logits.
    support_x, support_y, query_x, query_y = episode_tensors(test_split, 3)
    logits = model.logits(support_x, support_y, query_x)
    embeddings = model.embed(torch.cat([support_x, query_x]))
    expected = F.logsigmoid(model.learner.relation_logits(embeddings[:5], embeddings[5:]))  # 1-shot: sum = the shot
    torch.testing.assert_close(logits, expected)


def test_a_checkpoint_rebuilds_identical_logits(relation_run: Path, test_split, tmp_path: Path) -> None:
    model, state = model_from_checkpoint(relation_run)
    support_x, support_y, query_x, _ = episode_tensors(test_split, 0, shots=2)
    logits = model.logits(support_x, support_y, query_x)
    # A model built in Python, saved and rebuilt from its spec's names and arguments.
    torch.manual_seed(1)
    built = FewShotModel(relation_spec(loss="ce", support="mean", hidden=4))
    save_checkpoint(tmp_path / "built.pt", {"spec": built.spec.to_dict(), "model": built.state_dict()})
    rebuilt, _ = model_from_checkpoint(tmp_path / "built.pt")
    assert rebuilt.learner.loss_name == "ce" and rebuilt.learner.support == "mean"
    assert torch.equal(rebuilt.logits(support_x, support_y, query_x), built.eval().logits(support_x, support_y, query_x))
    save_checkpoint(tmp_path / "again.pt", {**load_checkpoint(relation_run), "model": model.state_dict()})
    again, _ = model_from_checkpoint(tmp_path / "again.pt")
    assert torch.equal(again.logits(support_x, support_y, query_x), logits)
    assert state["spec"]["backbone_args"]["pools"] == 2


def test_the_api_classifies_by_relation_and_refuses_what_needs_a_metric(relation_run: Path, test_split) -> None:
    trained = load(relation_run)
    support_x, support_y, query_x, query_y = episode_tensors(test_split, 5)
    labels = [f"class {int(y)}" for y in support_y]
    probabilities, classes = trained.predict_proba(support_x, labels, query_x)
    expected = trained.model.logits(support_x, support_y, query_x).softmax(dim=1)
    assert classes == [f"class {i}" for i in range(5)]
    torch.testing.assert_close(probabilities, expected)
    predicted = trained.classify(support_x, labels, query_x)
    assert np.mean([p == f"class {int(y)}" for p, y in zip(predicted, query_y)]) > 0.2
    # Exact search ranks by relation score; the uses that need a metric or many single pairs say why not.
    index = trained.index(support_x, labels=labels, progress=False)
    result = index.search(query_x[:3], k=2)
    assert result.indices.shape == (3, 2) and (result.distances >= 0).all()
    assert isinstance(trained.distance, RelationScore)
    with pytest.raises(ValueError, match="faiss cannot index this model's distance.*relation learner"):
        index.build_ann("ivf")
    with pytest.raises(ValueError, match="k-means needs .*relation learner"):
        trained.cluster(query_x, 2)
    assert len(set(trained.cluster(query_x, 2, method="agglomerative").labels.tolist())) == 2
    with pytest.raises(ValueError, match="verification and open-set calibration .* the relation learner"):
        trained.calibrate(test_split)
    with pytest.raises(ValueError, match=r"embedding metrics .* the relation learner \(Relation Network\)"):
        embedding_metrics(trained.model, test_split, test_split, torch.device("cpu"))
