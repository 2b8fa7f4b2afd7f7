"""Heads in the evaluator, the report, the command line and the API: the prototype head gives today's numbers,
several heads are paired on identical episodes of one embedding pass, their numbers are a function of the seed,
and a head that needs what is unknown is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.api import load
from fewshot.cli.evaluate import main as evaluate_main
from fewshot.data.datasets import DatasetSplits, load_splits
from fewshot.evaluation import (Candidate, EvaluationSettings, evaluate_checkpoint, evaluate_model,
                                evaluation_episodes, format_table, score_episodes)
from fewshot.evaluation.heads import build_head
from fewshot.model.checkpoint import model_from_checkpoint
from tests.support.tiny_runs import train_tiny

HEADS = ["prototype", "simpleshot", ("simpleshot", {"norm": "L2N"}), "logistic", ("finetune", {"steps": 100}),
         ("finetune-backbone", {"steps": 2})]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return train_tiny(tmp_path_factory.mktemp("heads") / "run", data_root)


@pytest.fixture(scope="module")
def splits(data_root: Path) -> DatasetSplits:
    return load_splits("omniglot", "vinyals", data_root)


@pytest.fixture(scope="module")
def report(checkpoint: Path, splits: DatasetSplits) -> dict:
    return evaluate_checkpoint(checkpoint, ways_shots=[(5, 1), (5, 2)], queries=3, episodes=8, progress=False,
                               splits=splits, heads=HEADS)


def test_the_prototype_head_reproduces_the_evaluation_without_heads(report: dict, checkpoint: Path,
                                                                    splits: DatasetSplits) -> None:
    plain = evaluate_checkpoint(checkpoint, ways_shots=[(5, 1), (5, 2)], queries=3, episodes=8, progress=False,
                                splits=splits)
    assert "heads" not in plain
    assert [r["per_episode"] for r in report["results"]] == [r["per_episode"] for r in plain["results"]]
    prototype = report["heads"][0]
    assert (prototype["head"], prototype["reference"]) == ("prototype", True)
    assert [r["per_episode"] for r in prototype["results"]] == [r["per_episode"] for r in plain["results"]]
    # The heads share the model's embeddings: no image is embedded twice.
    assert report["embedding"]["images_embedded"] == plain["embedding"]["images_embedded"]
    model, _ = model_from_checkpoint(checkpoint)
    direct = evaluate_model(model, splits.test, 5, 1, 3, episodes=8, progress=False, head="prototype")
    assert direct.tolist() == plain["results"][0]["per_episode"]


def test_every_head_is_scored_and_paired_with_the_prototype_on_identical_episodes(report: dict) -> None:
    names = [h["head"] for h in report["heads"]]
    assert names == ["prototype", "simpleshot", "simpleshot(norm=L2N)", "logistic", "finetune(steps=100)",
                     "finetune-backbone(steps=2)"]
    reference = [np.array(r["per_episode"]) for r in report["heads"][0]["results"]]
    for head in report["heads"][1:]:
        assert head["transductive"] is False and [(r["ways"], r["shots"]) for r in head["results"]] == [(5, 1), (5, 2)]
        for row, base in zip(head["results"], reference):
            mine = np.array(row["per_episode"])
            assert row["difference"]["mean"] == pytest.approx((mine - base).mean())
            assert row["difference"]["n"] == 8 and 0 <= row["p_value"] <= 1
            assert row["seconds_per_1000_episodes"] > 0
        assert np.mean([r["accuracy"] for r in head["results"]]) > 0.4  # chance: 0.2
    assert report["base_mean"]["images"] > 0 and report["base_mean"]["seed"] == 0
    table = format_table(report)
    assert "simpleshot(norm=L2N)" in table and "(reference)" in table and "s/1000 ep" in table


def test_the_same_seed_gives_the_same_numbers_whatever_heads_run_beside(report: dict, checkpoint: Path,
                                                                         splits: DatasetSplits) -> None:
    alone = evaluate_checkpoint(checkpoint, ways_shots=[(5, 2)], queries=3, episodes=8, progress=False, splits=splits,
                                heads=[("finetune", {"steps": 100})])
    assert alone["heads"][1]["results"][0]["per_episode"] == report["heads"][4]["results"][1]["per_episode"]


def test_transductive_heads_are_marked_in_the_report(checkpoint: Path, splits: DatasetSplits) -> None:
    marked = evaluate_checkpoint(checkpoint, ways_shots=[(5, 1)], queries=3, episodes=2, progress=False,
                                 splits=splits, heads=["tim-gd"])
    assert marked["heads"][1]["transductive"] is True
    assert "tim-gd (transductive)" in format_table(marked)


def test_a_head_needing_the_base_mean_is_refused_where_it_is_unknown(checkpoint: Path, splits: DatasetSplits) -> None:
    model, _ = model_from_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="needs the mean embedding of the model's training"):
        evaluate_model(model, splits.test, 5, 1, 3, episodes=2, progress=False, head="simpleshot")
    given = evaluate_model(model, splits.test, 5, 1, 3, episodes=2, progress=False, head="simpleshot",
                           base_mean=torch.zeros(64))
    assert given.shape == (2,)


def test_heads_with_other_checkpoints_or_adapting_heads_with_views_are_refused(checkpoint: Path,
                                                                               splits: DatasetSplits) -> None:
    with pytest.raises(ValueError, match="--compare and --ensemble compare checkpoints"):
        evaluate_checkpoint(checkpoint, episodes=2, progress=False, splits=splits, heads=["logistic"],
                            compare=checkpoint)
    with pytest.raises(ValueError, match="finetune-backbone adapt the model"):
        evaluate_checkpoint(checkpoint, episodes=2, queries=3, progress=False, splits=splits,
                            heads=["finetune-backbone"], views={"rotations": True})
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        EvaluationSettings(heads=["nope"])


def test_candidates_sharing_a_cache_are_scored_from_one_embedding(checkpoint: Path, splits: DatasetSplits) -> None:
    model, _ = model_from_checkpoint(checkpoint)
    plain = Candidate("model", model, splits.test)
    logistic = Candidate("logistic", model, splits.test, head=build_head("logistic"))
    settings = EvaluationSettings(episodes=4, queries=3, progress=False)
    logistic.embeddings = plain.cache(settings)
    timings: dict[str, float] = {}
    chosen = evaluation_episodes(splits.test, 5, 1, 3, 4, 0)
    scores = score_episodes([plain, logistic], chosen, settings, timings)
    touched = np.unique(np.concatenate([e.indices() for e in chosen]))
    assert plain.embeddings.embedded == len(touched)
    assert set(scores) == set(timings) == {"model", "logistic"}


def test_the_cli_takes_heads_with_their_arguments(checkpoint: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "heads.json"
    code = evaluate_main([str(checkpoint), "--episodes", "3", "--queries", "3", "--no-progress", "--report", str(path),
                          "--head", "simpleshot", "--head-arg", "norm=L2N", "--head", "finetune",
                          "--head-arg", "steps=4", "--head-arg", "cosine=true"])
    assert code == 0, capsys.readouterr().err
    written = json.loads(path.read_text())
    assert [(h["name"], h["args"]) for h in written["heads"]] == [
        ("prototype", {}), ("simpleshot", {"norm": "L2N"}), ("finetune", {"steps": 4, "cosine": True})]
    assert "finetune(steps=4, cosine=True)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--head-arg", "norm=L2N"], "--head-arg sets an argument of the --head NAME given before it"),
    (["--head", "simpleshot", "--head-arg", "nrm=L2N"], "unknown --head-arg 'nrm' for head 'simpleshot'"),
    (["--head", "simpleshot", "--head-arg", "norm"], "is not of the form name=value"),
    (["--head", "simplshot"], "invalid choice: 'simplshot'"),
])
def test_the_cli_refuses_bad_heads_and_arguments(argv: list[str], message: str, checkpoint: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = evaluate_main([str(checkpoint), "--episodes", "1", "--report", str(tmp_path / "r.json"), *argv])
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err


def test_the_api_classifies_with_a_head(checkpoint: Path, splits: DatasetSplits) -> None:
    trained = load(checkpoint)
    test = splits.test
    heads = ("simpleshot", "logistic", build_head("finetune-backbone", steps=1))
    correct: dict[int, list[bool]] = {h: [] for h in range(len(heads))}
    # Four 5-way 1-shot, 3-query episodes (60 queries a head): one episode alone is too noisy for a tiny model.
    for first in range(0, 20, 5):
        items = np.concatenate([np.flatnonzero(test.labels == c)[:4] for c in range(first, first + 5)])
        x, y = test.gather(items), test.labels[items].tolist()
        support, query = list(range(0, len(items), 4)), [i for i in range(len(items)) if i % 4]
        truth = np.array([y[i] for i in query])
        own = trained.classify(x[support], [y[i] for i in support], x[query])
        assert trained.classify(x[support], [y[i] for i in support], x[query], head="prototype") == own
        for h, head in enumerate(heads):
            labels = trained.classify(x[support], [y[i] for i in support], x[query], head=head)
            correct[h].extend((np.array(labels) == truth).tolist())
    for h, head in enumerate(heads):
        # chance is 0.2; 0.35 is three binomial standard deviations above it over 60 queries
        assert np.mean(correct[h]) > 0.35, head


def test_heads_give_the_same_numbers_embedding_each_episode_afresh(report: dict, checkpoint: Path,
                                                                   splits: DatasetSplits) -> None:
    afresh = evaluate_checkpoint(checkpoint, ways_shots=[(5, 1)], queries=3, episodes=8, progress=False,
                                 splits=splits, heads=["logistic", ("finetune-backbone", {"steps": 2})],
                                 per_episode=True)
    assert afresh["embedding"]["path"] == "per-episode"
    assert afresh["heads"][1]["results"][0]["per_episode"] == report["heads"][3]["results"][0]["per_episode"]
    assert afresh["heads"][2]["results"][0]["per_episode"] == report["heads"][5]["results"][0]["per_episode"]
