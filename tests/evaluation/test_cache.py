"""Evaluation that embeds each image once: the same per-episode accuracies as embedding every episode afresh,
each touched image embedded once per model, chunked within a memory budget, the per-episode path kept for
models that declare episode-dependent embeddings, and comparisons that give each model its own preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.model.checkpoint import model_from_checkpoint
from fewshot.data import load_splits
from fewshot.evaluation import (Candidate, Ensemble, EvaluationSettings, embedding_metrics, evaluate_checkpoint,
                                evaluate_model, evaluation_episodes, score_episodes)
from fewshot.evaluation.cache import SplitEmbeddings
from fewshot.learners.base import prototype_logits
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.training import TrainConfig, train

SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]


def tiny_run(output: Path, data_root: Path, **overrides) -> Path:
    config = dict(train_ways=5, queries=2, eval_queries=5, episodes=20, val_every=20, val_episodes=2, test_episodes=2,
                  data_root=str(data_root), output=str(output), threads=1, **overrides)
    train(TrainConfig(**config), progress=False)
    return output / "best.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return tiny_run(tmp_path_factory.mktemp("once") / "run", data_root)


@pytest.fixture(scope="module")
def test_split(data_root: Path):
    return load_splits("omniglot", "vinyals", data_root).test


def test_both_paths_give_the_same_predictions_for_every_query(checkpoint: Path, test_split) -> None:
    model, _ = model_from_checkpoint(checkpoint)
    differing = 0
    for ways, shots in SETTINGS:
        episodes = evaluation_episodes(test_split, ways, shots, 15, 15, seed=0)
        cache = SplitEmbeddings(model, test_split)
        cache.ensure(np.concatenate([e.indices() for e in episodes]))
        for episode in episodes:
            support_x, support_y, query_x, _ = test_split.episode_tensors(episode)
            fresh = model.logits(support_x, support_y, query_x).argmax(1)
            once = prototype_logits(model.learner.scoring_distance, cache.rows(episode.support), support_y,
                                    cache.rows(episode.query), ways).argmax(1)
            differing += int((fresh != once).sum())
    assert differing == 0, f"{differing} queries are classified differently by the two paths"


def test_the_report_is_identical_to_the_per_episode_report(checkpoint: Path, data_root: Path) -> None:
    options = dict(ways_shots=SETTINGS, queries=15, episodes=30, seed=0, progress=False)
    once = evaluate_checkpoint(checkpoint, **options)
    fresh = evaluate_checkpoint(checkpoint, per_episode=True, **options)
    for a, b in zip(once["results"], fresh["results"]):
        assert (a["ways"], a["shots"]) == (b["ways"], b["shots"]) and a["per_episode"] == b["per_episode"]
        assert a["accuracy"] == b["accuracy"] and a["ci95"] == b["ci95"]
    assert (once["embedding"]["path"], fresh["embedding"]["path"]) == ("embed-once", "per-episode")


def test_embedding_metrics_reuse_the_evaluation_embeddings(checkpoint: Path, data_root: Path) -> None:
    splits = load_splits("omniglot", "vinyals", data_root)
    val, test = splits.val.subset(np.arange(12)), splits.test.subset(np.arange(16))
    model, _ = model_from_checkpoint(checkpoint)
    cache = SplitEmbeddings(model, test)
    cache.ensure(np.arange(0, len(test), 3))  # what some episodes touched
    reused = embedding_metrics(model, val, test, torch.device("cpu"), pairs=2000, test_embeddings=cache)
    assert reused == embedding_metrics(model, val, test, torch.device("cpu"), pairs=2000)
    assert cache.embedded == len(test)  # the rest embedded once, the first third not again


def test_each_touched_image_is_embedded_once_per_model(checkpoint: Path, test_split) -> None:
    report = evaluate_checkpoint(checkpoint, compare=checkpoint, ways_shots=SETTINGS, queries=15, episodes=30, seed=0,
                                 progress=False)
    touched = set()
    for ways, shots in SETTINGS:
        for episode in evaluation_episodes(test_split, ways, shots, 15, 30, seed=0):
            touched |= set(episode.indices().tolist())
    assert report["embedding"]["images_embedded"] == [len(touched), len(touched)]
    assert report["embedding"]["matrix_bytes"][0] == len(touched) * 64 * 4  # Conv-4 on 28 px: 64-d float32


def test_a_small_memory_budget_streams_in_chunks_with_the_same_numbers(checkpoint: Path, test_split) -> None:
    model, _ = model_from_checkpoint(checkpoint)
    episodes = evaluation_episodes(test_split, 5, 5, 15, 30, seed=0)
    whole = evaluate_model(model, test_split, 5, 5, 15, episode_list=episodes)
    budget = 200 * 64 * 4  # 200 embeddings: a 5-way 5-shot 15-query episode holds 100 images
    cache = SplitEmbeddings(model, test_split, max_bytes=budget)
    chunked = evaluate_model(model, test_split, 5, 5, 15, episode_list=episodes, embeddings=cache)
    assert np.array_equal(whole, chunked)
    assert cache.nbytes <= budget and cache.embedded > len(np.unique(np.concatenate([e.indices() for e in episodes])))


class BatchCentred(torch.nn.Module):
    """A transductive embedding: each image minus the mean of the batch it is embedded with."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.backbone(images)
        return embeddings - embeddings.mean(0, keepdim=True)


def test_models_that_embed_per_episode_need_the_per_episode_path(test_split) -> None:
    torch.manual_seed(0)
    model = FewShotModel(ModelSpec())
    model.backbone = BatchCentred(model.backbone)
    episodes = evaluation_episodes(test_split, 5, 1, 15, 20, seed=0)
    fresh = evaluate_model(model, test_split, 5, 1, 15, episode_list=episodes, per_episode=True)
    assert np.array_equal(evaluate_model(model, test_split, 5, 1, 15, episode_list=episodes, per_episode=True), fresh)
    # Embedded once, a transductive model's numbers change: per_episode is what such a model needs.
    assert not np.array_equal(evaluate_model(model, test_split, 5, 1, 15, episode_list=episodes), fresh)


def test_a_compared_model_gets_its_own_image_size(checkpoint: Path, data_root: Path, tmp_path: Path) -> None:
    other = tiny_run(tmp_path / "run32", data_root, image_size=32)
    options = dict(ways_shots=[(5, 1)], queries=15, episodes=30, seed=0, progress=False)
    alone = evaluate_checkpoint(other, **options)
    compared = evaluate_checkpoint(checkpoint, compare=other, **options)
    assert compared["compare"]["results"][0]["accuracy"] == alone["results"][0]["accuracy"]
    assert compared["compare"]["spec"]["image_size"] == 32 and compared["spec"]["image_size"] == 28


def test_models_are_scored_by_name_alone_and_as_an_ensemble(checkpoint: Path, test_split) -> None:
    model, _ = model_from_checkpoint(checkpoint)
    twin = FewShotModel(model.spec)  # another model: untrained weights
    episodes = evaluation_episodes(test_split, 5, 1, 15, 10, seed=1)
    first, second = Candidate("trained", model, test_split), Candidate("untrained", twin, test_split)
    scores = score_episodes([first, second, Ensemble("both", [first, second])], episodes)
    assert list(scores) == ["trained", "untrained", "both"]
    assert np.array_equal(scores["trained"], evaluate_model(model, test_split, 5, 1, 15, episode_list=episodes))
    assert np.array_equal(scores["untrained"], evaluate_model(twin, test_split, 5, 1, 15, episode_list=episodes))
    assert first.embeddings.embedded == len(np.unique(np.concatenate([e.indices() for e in episodes])))  # once
    fresh = score_episodes([Ensemble("both", [first, second])], episodes, EvaluationSettings(per_episode=True))
    np.testing.assert_array_equal(fresh["both"], scores["both"])
    with pytest.raises(ValueError, match="scorers need distinct names"):
        score_episodes([first, Candidate("trained", twin, test_split)], episodes)
