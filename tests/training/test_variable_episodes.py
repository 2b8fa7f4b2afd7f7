"""Training on Meta-Dataset's variable-way, imbalanced-shot episodes (`--sampling meta-dataset`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes.metadataset import MetaDatasetSampler
from fewshot.data.datasets import load_splits
from fewshot.distances import build_distance
from fewshot.learners import LEARNERS
from fewshot.model.checkpoint import load_checkpoint
from fewshot.registry import call_with_injected
from fewshot.training.config import TrainConfig, check_data, check_settings, meta_dataset_sampler
from tests.training.test_loop import assert_identical, read_log, run_args, run_main

META = ("--meta-dataset", "--max-ways", "8", "--val-every", "5", "--val-episodes", "2", "--test-episodes", "2")


def test_meta_dataset_sampler_of_a_run_varies_ways_and_shots_and_is_a_function_of_seed_and_index(
        data_root: Path) -> None:
    train = load_splits("omniglot", root=data_root).get("train")
    config = TrainConfig(sampling="meta-dataset", max_ways=8, seed=3)
    sampler = meta_dataset_sampler(config, train, num_episodes=40)
    assert isinstance(sampler, MetaDatasetSampler) and sampler.ways_range == (5, 8)
    episodes = sampler.episodes(np.arange(40))
    assert len({e.ways for e in episodes}) > 1
    assert any(len(set(e.support_counts.tolist())) > 1 for e in episodes)  # imbalanced shots occur
    again = meta_dataset_sampler(config, train, num_episodes=40).episode(17)
    assert np.array_equal(again.support, episodes[17].support) and np.array_equal(again.query, episodes[17].query)


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_every_learner_takes_unequal_shots_per_class(learner: str) -> None:
    """Prototypes are per-class means over the labels, and the pair and proxy losses read labels only: an
    imbalanced episode gives every learner a finite loss and finite gradients."""
    generator = torch.Generator().manual_seed(0)
    shots, queries, dim = [1, 4, 2, 7, 3], 2, 16
    support_labels = torch.repeat_interleave(torch.arange(len(shots)), torch.tensor(shots))
    query_labels = torch.arange(len(shots)).repeat_interleave(queries)
    support = torch.randn(len(support_labels), dim, generator=generator, requires_grad=True)
    query = torch.randn(len(query_labels), dim, generator=generator, requires_grad=True)
    model = call_with_injected(LEARNERS[learner], {}, distance=build_distance(LEARNERS[learner].default_distance, dim),
                               num_classes=10, dim=dim)  # as FewShotModel builds it
    output = model(support, support_labels, query, query_labels, generator=torch.Generator().manual_seed(1),
                   classes=torch.tensor([0, 3, 5, 6, 9]))
    assert torch.isfinite(output.loss) and output.logits.shape == (len(query_labels), len(shots))
    output.loss.backward()
    assert torch.isfinite(support.grad).all() and torch.isfinite(query.grad).all()


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_ways": 8}, "--max-ways 8 applies to --sampling meta-dataset only"),
    ({"sampling": "meta-dataset", "max_ways": 3}, "--max-ways must be a whole number of at least 5"),
    ({"sampling": "meta-dataset", "max_ways": 7.5}, "--max-ways must be a whole number of at least 5"),
])
def test_bad_meta_dataset_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_settings(TrainConfig(**settings))


def test_a_split_too_small_for_meta_dataset_episodes_is_refused_before_training(data_root: Path) -> None:
    splits = load_splits("omniglot", root=data_root)
    config = TrainConfig(sampling="meta-dataset", queries=2, train_ways=5, eval_queries=5)
    check_data(config, splits)
    small = dataclasses.replace(splits, train=splits.train.subset([0, 1, 2]))  # fewer classes than 5 ways
    with pytest.raises(ValueError, match="--sampling meta-dataset on the omniglot .* train split"):
        check_data(config, small)


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    output = tmp_path_factory.mktemp("meta") / "run"
    code, _, stderr = run_main(run_args(output, data_root, episodes=10, extra=META))
    assert code == 0, stderr
    return output


def test_a_meta_dataset_run_records_its_setting_and_trains(meta_run: Path) -> None:
    config = json.loads((meta_run / "config.json").read_text())
    assert config["sampling"] == "meta-dataset" and config["max_ways"] == 8
    assert load_checkpoint(meta_run / "last.pt")["config"]["sampling"] == "meta-dataset"
    train = [r for r in read_log(meta_run) if r["kind"] == "train"]
    assert len(train) == 10 and all(np.isfinite(r["loss"]) for r in train)
    # Validation stays fixed-shape: --ways 5 --shots 1.
    report = json.loads((meta_run / "test_report.json").read_text())
    assert (report["results"][0]["ways"], report["results"][0]["shots"]) == (5, 1)


def test_two_meta_dataset_runs_are_identical_and_a_resumed_run_equals_an_uninterrupted_one(
        meta_run: Path, data_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert run_main(run_args(again, data_root, episodes=10, extra=META))[0] == 0
    first, second = load_checkpoint(meta_run / "last.pt"), load_checkpoint(again / "last.pt")
    for key in ("model", "optimizer", "scheduler"):
        assert_identical(first[key], second[key], key)

    # Stopped at episode 5 and resumed to 10 (a step schedule run may be extended) equals the 10-episode run.
    resumed = tmp_path / "resumed"
    assert run_main(run_args(resumed, data_root, episodes=5, extra=META))[0] == 0
    code, _, stderr = run_main(run_args(resumed, data_root, episodes=10, extra=(*META, "--resume")))
    assert code == 0, stderr
    state = load_checkpoint(resumed / "last.pt")
    assert state["episode"] == first["episode"] == 10
    for key in ("model", "optimizer", "scheduler"):
        assert_identical(state[key], first[key], key)
    train = [r for r in read_log(resumed) if r["kind"] == "train"]
    assert train == [r for r in read_log(meta_run) if r["kind"] == "train"]
