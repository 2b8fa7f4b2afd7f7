"""Evaluation on realistic episodes (issue 27): Lake's within-alphabet protocol, Meta-Dataset's variable and
imbalanced episodes, and cross-domain evaluation (a checkpoint on data of other channels and size), on the
miniature Omniglot and a synthetic image folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.cli.evaluate import main
from fewshot.cli.train import main as train_main
from fewshot.data.datasets import DatasetSplits, load_splits
from fewshot.data.splits import ClassSplit, to_float
from fewshot.evaluation import EvaluationSettings, evaluate_checkpoint, evaluate_model
from fewshot.evaluation.checkpoints import adapt_split
from fewshot.evaluation.episodes import metadataset_evaluation, within_parent_evaluation
from fewshot.model.checkpoint import model_from_checkpoint
from fewshot.training import TrainConfig, train
from tests.support.synthetic import write_image_folder

FOLDER_RUN = ["--dataset", "folder", "--ways", "2", "--shots", "1", "--train-ways", "3", "--queries", "2",
              "--eval-queries", "2", "--val-every", "5", "--val-episodes", "2", "--test-episodes", "4",
              "--episodes", "5", "--threads", "1", "--no-progress", "--image-size", "16"]


@pytest.fixture(scope="module")
def splits(data_root: Path) -> DatasetSplits:
    return load_splits("omniglot", "vinyals", data_root)


@pytest.fixture(scope="module")
def omniglot_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """best.pt of a tiny Omniglot run: 1-channel images."""
    output = tmp_path_factory.mktemp("variable") / "run"
    train(TrainConfig(train_ways=5, queries=2, eval_queries=5, episodes=10, val_every=10, val_episodes=2,
                      test_episodes=2, data_root=str(data_root), output=str(output), threads=1), progress=False)
    return output / "best.pt"


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(RGB image folder, best.pt of a tiny run on it: 3-channel 16px images)."""
    base = tmp_path_factory.mktemp("colour")
    data = write_image_folder(base / "data", classes=12, per_class=7, size=16)
    assert train_main([*FOLDER_RUN, "--data-root", str(data), "--output", str(base / "run")]) == 0
    return data, base / "run" / "best.pt"


def evaluate(checkpoint: Path, **kwargs) -> dict:
    options = {"ways_shots": [(5, 1)], "queries": 5, "episodes": 8, "seed": 0, "progress": False, **kwargs}
    return evaluate_checkpoint(checkpoint, **options)


def test_within_alphabet_episodes_share_one_alphabet_of_unrotated_classes(splits: DatasetSplits) -> None:
    target = splits.test
    episodes, record = within_parent_evaluation(target, 5, 1, 1, 30, seed=0)
    assert len(episodes) == 30 and record["rotations"] == "rot000 classes only"
    for episode in episodes:
        names = [target.class_names[c] for c in episode.classes]
        assert len({name.split("/")[0] for name in names}) == 1
        assert all(name.endswith("/rot000") for name in names)
        assert set(target.labels[episode.support]) == set(episode.classes.tolist())
    again, _ = within_parent_evaluation(target, 5, 1, 1, 30, seed=0)
    assert all(np.array_equal(a.indices(), b.indices()) for a, b in zip(episodes, again))


def test_lake_within_alphabet_evaluation_runs_end_to_end(omniglot_checkpoint: Path, data_root: Path,
                                                         tmp_path: Path) -> None:
    # The alphabets of Lake's evaluation set as loaded (the real 20 with FEWSHOT_DATA, else the miniature's).
    test = load_splits("omniglot", "lake", data_root).test
    sizes: dict[str, int] = {}
    for name in test.class_names:
        if name.endswith("/rot000") or "/rot" not in name:
            sizes[name.split("/")[0]] = sizes.get(name.split("/")[0], 0) + 1
    report = evaluate(omniglot_checkpoint, split="lake", queries=1, episode_kind="within-parent", allow_seen=True)
    source = report["episode_source"]
    assert (source["kind"], source["seed"], report["split"]) == ("within-parent", 0, "lake")
    row, = report["results"]
    assert (row["ways"], row["shots"], len(row["per_episode"])) == (5, 1, 8)
    usable = {name for name, size in sizes.items() if size >= 5}
    assert set(row["parents"]["included_parents"]) == usable
    assert set(row["parents"]["excluded_parents"]) == set(sizes) - usable
    assert row["distribution"]["support_per_class"] == {"mean": 1.0, "min": 1.0, "max": 1.0}
    assert 0 <= row["accuracy"] <= 1 and row["ci95"] >= 0
    # Ways no alphabet holds: the alphabets are excluded, then refused with the count needed.
    too_many = max(sizes.values()) + 1
    with pytest.raises(ValueError, match=f"no parent has the {too_many} classes"), pytest.warns(UserWarning):
        evaluate(omniglot_checkpoint, split="lake", ways_shots=[(too_many, 1)], queries=1,
                 episode_kind="within-parent", allow_seen=True)
    # The command line.
    path = tmp_path / "lake.json"
    assert main([str(omniglot_checkpoint), "--split", "lake", "--within-alphabet", "--ways", "5", "--queries", "1",
                 "--episodes", "4", "--allow-seen-classes", "--report", str(path), "--no-progress"]) == 0
    assert json.loads(path.read_text())["episode_source"]["kind"] == "within-parent"


def test_meta_dataset_evaluation_matches_nearest_prototype_by_hand(omniglot_checkpoint: Path,
                                                                    splits: DatasetSplits) -> None:
    report = evaluate(omniglot_checkpoint, splits=splits, episode_kind="meta-dataset", max_ways=8, episodes=6)
    row, = report["results"]
    assert (row["ways"], row["shots"], report["queries"]) == ("variable", "variable", "variable")
    assert report["episode_source"]["kind"] == "meta-dataset"
    assert report["episode_source"]["ways_range"] == [5, 8]
    assert report["embedding"]["path"] == "embed-once"
    episodes, _ = metadataset_evaluation(splits.test, 6, 0, max_ways=8)
    counts = np.concatenate([e.support_counts for e in episodes])
    assert counts.min() < counts.max()  # imbalanced, so Episode.shots would raise
    distribution = row["distribution"]
    assert distribution["ways"]["min"] == min(e.ways for e in episodes)
    assert distribution["support_per_class"]["max"] == counts.max()
    assert np.isclose(distribution["support_per_class"]["mean"], counts.mean())

    # Episode 0 by hand: per-class means of the unequal supports, nearest prototype by the learner's distance.
    model, _ = model_from_checkpoint(omniglot_checkpoint)
    model.eval()
    for e, episode in enumerate(episodes[:2]):
        with torch.no_grad():
            support = model.embed(to_float(splits.test.gather(episode.support)))
            query = model.embed(to_float(splits.test.gather(episode.query)))
            centres = torch.stack([support[torch.from_numpy(episode.support_labels == c)].mean(dim=0)
                                   for c in range(episode.ways)])
            guess = (-model.learner.scoring_distance(query, centres)).argmax(dim=1).numpy()
        assert np.isclose(row["per_episode"][e], (guess == episode.query_labels).mean())
    # Embedding each episode afresh gives the same numbers.
    fresh = evaluate(omniglot_checkpoint, splits=splits, episode_kind="meta-dataset", max_ways=8, episodes=6,
                     per_episode=True)
    assert fresh["results"][0]["per_episode"] == row["per_episode"]


def test_the_fixed_shape_path_is_unchanged(omniglot_checkpoint: Path, splits: DatasetSplits) -> None:
    default = evaluate(omniglot_checkpoint, splits=splits)
    explicit = evaluate(omniglot_checkpoint, splits=splits, episode_kind="fixed")
    assert default["results"][0]["per_episode"] == explicit["results"][0]["per_episode"]
    assert "distribution" not in default["results"][0] and "input_adaptation" not in default
    assert default["episode_source"] == {"kind": "seed", "seed": 0, "sampler": "episodes.EpisodeSampler"}
    model, _ = model_from_checkpoint(omniglot_checkpoint)
    direct = evaluate_model(model, splits.test, 5, 1, 5, episodes=8, seed=0, progress=False)
    assert default["results"][0]["per_episode"] == direct.tolist()


def test_a_colour_checkpoint_evaluates_on_omniglot_and_a_gray_one_on_colour_images(
        colour_run: tuple[Path, Path], omniglot_checkpoint: Path, data_root: Path) -> None:
    data, colour = colour_run
    on_omniglot = evaluate(colour, dataset="omniglot", split="vinyals", data_root=data_root)
    adaptation = on_omniglot["input_adaptation"]
    assert (adaptation["from"]["channels"], adaptation["to"]["channels"]) == (1, 3)
    assert adaptation["steps"] == ["gray repeated to 3 channels"]
    assert (adaptation["trained_on"], adaptation["evaluated_on"]) == ("folder", "omniglot")
    assert len(on_omniglot["results"][0]["per_episode"]) == 8

    on_colour = evaluate(omniglot_checkpoint, dataset="folder", data_root=data, ways_shots=[(2, 1)], queries=2)
    adaptation = on_colour["input_adaptation"]
    assert (adaptation["from"]["channels"], adaptation["to"]["channels"]) == (3, 1)
    assert "luminance" in adaptation["steps"][0]
    assert len(on_colour["results"][0]["per_episode"]) == 8


def test_adapt_split_converts_channels_and_size_and_refuses_what_it_cannot() -> None:
    rgb = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 200, 100, 50
    split = ClassSplit(rgb, np.array([0, 1]), ["a", "b"])
    gray, record = adapt_split(split, 1, 4)
    assert tuple(gray.images.shape) == (2, 4, 4) and record["to"] == {"channels": 1, "size": [4, 4]}
    assert int(gray.images[0, 0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert gray.class_names == split.class_names and np.array_equal(gray.item_ids, split.item_ids)
    same, nothing = adapt_split(split, 3, 8)
    assert same is split and nothing is None
    four = ClassSplit(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="4 channel"):
        adapt_split(four, 3, 8)


def test_bad_episode_kind_settings_are_refused(tmp_path: Path, omniglot_checkpoint: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown episode kind"):
        EvaluationSettings(episode_kind="imbalanced")
    with pytest.raises(ValueError, match="Meta-Dataset episodes only"):
        EvaluationSettings(max_ways=10)
    assert main([str(omniglot_checkpoint), "--within-alphabet", "--meta-dataset", "--report",
                 str(tmp_path / "r.json")]) == 2
    assert "choose one" in capsys.readouterr().err

