"""Evaluation on Dirichlet-imbalanced query sets (issue 26 item 4): the setting, the episodes it draws, the
report's record of it, the command-line flag, and the evaluator on unequal query counts per class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fewshot.cli.evaluate import main
from fewshot.data.datasets import load_splits
from fewshot.evaluation import EvaluationSettings, evaluate_checkpoint
from fewshot.evaluation.episodes import episode_distribution, evaluation_episodes
from fewshot.evaluation.report import default_report_path
from fewshot.training import TrainConfig, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    output = tmp_path_factory.mktemp("dirichlet") / "run"
    train(TrainConfig(train_ways=5, queries=2, eval_queries=5, episodes=4, val_every=4, val_episodes=2,
                      test_episodes=2, data_root=str(data_root), output=str(output), threads=1), progress=False)
    return output / "best.pt"


@pytest.mark.parametrize("alpha", [0, -2.0, float("inf"), True, "2"])
def test_bad_concentration_is_refused(alpha) -> None:
    with pytest.raises(ValueError, match="query_dirichlet"):
        EvaluationSettings(query_dirichlet=alpha)


def test_dirichlet_queries_need_fixed_seeded_episodes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fixed"):
        EvaluationSettings(query_dirichlet=2.0, episode_kind="meta-dataset")
    with pytest.raises(ValueError, match="episode list"):
        EvaluationSettings(query_dirichlet=2.0, episode_list=tmp_path / "list.json")


def test_evaluation_episodes_are_imbalanced_over_the_balanced_classes(data_root: Path) -> None:
    target = load_splits("omniglot", "vinyals", data_root).test
    balanced = evaluation_episodes(target, 5, 1, 3, 20, seed=0)
    imbalanced = evaluation_episodes(target, 5, 1, 3, 20, seed=0, query_dirichlet=2.0)
    assert all(np.array_equal(a.classes, b.classes) for a, b in zip(balanced, imbalanced))
    assert all(e.query_counts.sum() == 15 for e in imbalanced)
    distribution = episode_distribution(imbalanced)["queries_per_class"]
    assert distribution["mean"] == 3 and distribution["min"] < 3 < distribution["max"]
    assert episode_distribution(balanced)["queries_per_class"] == {"mean": 3.0, "min": 3.0, "max": 3.0}


def test_report_records_dirichlet_queries(checkpoint: Path) -> None:
    options = {"ways_shots": [(5, 1)], "queries": 3, "episodes": 6, "seed": 0, "progress": False}
    report = evaluate_checkpoint(checkpoint, query_dirichlet=2.0, **options)
    assert report["episode_source"]["query_dirichlet"] == 2.0
    result = report["results"][0]
    assert result["distribution"]["queries_per_class"]["max"] > 3
    assert len(result["per_episode"]) == 6 and 0 <= result["accuracy"] <= 1
    plain = evaluate_checkpoint(checkpoint, **options)
    assert "query_dirichlet" not in plain["episode_source"] and "distribution" not in plain["results"][0]


def test_command_line_flag(checkpoint: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code = main([str(checkpoint), "--queries", "3", "--episodes", "4", "--dirichlet-queries", "2", "--no-progress",
                 "--report", str(report_path)])
    assert code == 0
    assert json.loads(report_path.read_text())["episode_source"]["query_dirichlet"] == 2.0
    assert default_report_path(checkpoint, query_dirichlet=2.0).name == "eval_best_test_dirichlet2.json"
    assert main([str(checkpoint), "--dirichlet-queries", "2", "--meta-dataset", "--no-progress",
                 "--report", str(tmp_path / "other.json")]) != 0
