"""Ensembles of checkpoints at evaluation: each query goes to the class with the largest sum of the
members' log-softmax prototype scores, every member with its own preprocessing, on identical episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.model.checkpoint import model_from_checkpoint
from fewshot.data import load_splits
from fewshot.evaluation import evaluate_checkpoint, evaluation_episodes
from fewshot.cli.evaluate import main
from tests.evaluation.test_cache import tiny_run


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("ensemble")
    # Two different models: another seed, and another image size (so another preprocessing).
    return [tiny_run(root / "a", data_root), tiny_run(root / "b", data_root, seed=1, image_size=32)]


def test_the_ensemble_is_the_sum_of_the_members_log_softmax_scores(members: list[Path], data_root: Path) -> None:
    report = evaluate_checkpoint(members[0], ensemble=[members[1]], ways_shots=[(20, 1)], queries=5, episodes=12,
                                 seed=3, progress=False)
    # By hand: each member scores every episode afresh on its own copy of the test split.
    models = [model_from_checkpoint(path)[0] for path in members]
    splits = [load_splits("omniglot", "vinyals", data_root, image_size=m.spec.image_size).test for m in models]
    episodes = evaluation_episodes(splits[0], 20, 1, 5, 12, seed=3)
    expected, alone = [], [[], []]
    for episode in episodes:
        total = 0
        for i, (model, split) in enumerate(zip(models, splits)):
            support_x, support_y, query_x, query_y = split.episode_tensors(episode)
            log_probs = model.logits(support_x, support_y, query_x).log_softmax(1)
            alone[i].append((log_probs.argmax(1) == query_y).float().mean().item())
            total = total + log_probs
        expected.append((total.argmax(1) == query_y).float().mean().item())
    np.testing.assert_allclose(report["results"][0]["per_episode"], expected, atol=1e-6)
    # The ensemble is neither member alone on these episodes (else the test could not tell them apart).
    assert not np.allclose(expected, alone[0]) and not np.allclose(expected, alone[1])
    assert [m["checkpoint"] for m in report["ensemble"]] == [str(p) for p in members]
    assert report["ensemble"][1]["spec"]["image_size"] == 32
    assert all(len(m["checkpoint_sha256"]) == 64 for m in report["ensemble"])


def test_an_ensemble_compares_against_a_single_model(members: list[Path]) -> None:
    options = dict(ways_shots=[(5, 1)], queries=5, episodes=10, seed=0, progress=False)
    single = evaluate_checkpoint(members[0], **options)
    report = evaluate_checkpoint(members[0], ensemble=[members[1]], compare=members[0], **options)
    other = report["compare"]["results"][0]
    assert other["accuracy"] == single["results"][0]["accuracy"]
    assert other["difference"]["mean"] == pytest.approx(report["results"][0]["accuracy"] - other["accuracy"])
    assert "ensemble" not in single


def test_embedding_metrics_of_an_ensemble_are_refused(members: list[Path]) -> None:
    with pytest.raises(ValueError, match="not an ensemble's"):
        evaluate_checkpoint(members[0], ensemble=[members[1]], embedding_metrics=True, progress=False)


def test_the_command_line_prints_the_members(members: list[Path], tmp_path: Path, capsys) -> None:
    code = main([str(members[0]), "--ensemble", str(members[1]), "--episodes", "4", "--queries", "5",
                 "--report", str(tmp_path / "r.json"), "--no-progress"])
    assert code == 0
    assert f"an ensemble of 2 models: {members[0]}, {members[1]}" in capsys.readouterr().out
