"""Your own data end to end: a generated ImageFolder tree trained and evaluated through the CLIs, then
classified through `fewshot.api.load` with the same preprocessing; folder-specific bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.support.synthetic import write_image_folder

from fewshot.inference.classifier import load
from fewshot.model.checkpoint import load_checkpoint
from fewshot.data import from_folder
from fewshot.cli.evaluate import main as evaluate_main
from fewshot.cli.train import main as train_main

TINY = ["--ways", "3", "--shots", "1", "--train-ways", "5", "--queries", "2", "--eval-queries", "5",
        "--val-every", "10", "--val-episodes", "4", "--test-episodes", "10", "--checkpoint-every", "10",
        "--threads", "1", "--no-progress", "--image-size", "32"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 classes of drawn coloured shapes, 12 images each, as root/<class>/<i>.png."""
    return write_image_folder(tmp_path_factory.mktemp("folder") / "shapes", classes=15, per_class=12, size=32)


@pytest.fixture(scope="module")
def run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("folder-run") / "run"
    code = train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(output), "--episodes", "30",
                       "--augment", "crop-flip-jitter", "--dataset-arg", "split_seed=4", *TINY])
    assert code == 0
    return output


def test_training_records_the_seeded_class_split_and_the_data(run: Path, folder: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    assert (config["dataset"], config["split"], config["image_size"]) == ("folder", "random", 32)
    assert config["data_root"] == str(folder.resolve()) and config["dataset_args"] == {"split_seed": 4}
    recorded = json.loads((run / "splits.json").read_text())
    expected = from_folder(folder, image_size=32, split_seed=4, progress=False)
    assert recorded["options"]["split_seed"] == 4 and recorded["options"]["channels"] == 3
    for name in ("train", "val", "test"):
        assert recorded[name] == list(expected.get(name).class_names)
    assert not set(recorded["train"]) & set(recorded["test"]) and not set(recorded["train"]) & set(recorded["val"])
    assert sorted(recorded["train"] + recorded["val"] + recorded["test"]) == sorted(p.name for p in folder.iterdir())
    state = load_checkpoint(run / "best.pt")
    assert state["dataset"] == "folder" and state["spec"]["in_channels"] == 3 and state["spec"]["image_size"] == 32
    report = json.loads((run / "test_report.json").read_text())
    assert report["classes"] == len(recorded["test"]) and len(report["results"][0]["per_episode"]) == 10


def test_evaluate_cli_rebuilds_the_same_test_classes_from_the_checkpoint(run: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    assert evaluate_main([str(run / "best.pt"), "--ways", "3", "--shots", "1", "--queries", "5", "--episodes", "10",
                          "--report", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    training_report = json.loads((run / "test_report.json").read_text())
    # Same checkpoint, classes, seed and episodes as the training run's own test evaluation: same accuracies.
    assert report["results"][0]["per_episode"] == training_report["results"][0]["per_episode"]
    assert report["dataset"] == "folder" and report["split"] == "random"


def test_the_api_classifies_folder_images_with_the_training_preprocessing(run: Path, folder: Path) -> None:
    classifier = load(run / "best.pt")
    splits = from_folder(folder, image_size=32, split_seed=4, progress=False)
    test = splits.test
    paths = [folder / item for item in test.item_ids]
    # Files through the API give exactly the stored uint8 pixels, hence the same embeddings.
    stored = test.gather(np.arange(len(test)))
    assert torch.equal(classifier.images_to_tensor(paths), stored.float() / 255)
    labels = [test.class_names[label] for label in test.labels]
    support = [i for c in range(test.num_classes) for i in np.flatnonzero(test.labels == c)[:3]]
    query = [i for i in range(len(test)) if i not in set(support)]
    predicted = classifier.classify([paths[i] for i in support], [labels[i] for i in support], [paths[i] for i in query])
    assert set(predicted) <= set(test.class_names)
    accuracy = np.mean([p == labels[i] for p, i in zip(predicted, query)])
    assert accuracy > 1 / test.num_classes + 0.2, f"3-way 3-shot accuracy {accuracy:.2f} is near chance"


def test_classes_too_small_for_the_episode_shape_are_named(folder: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(tmp_path / "run"),
                       "--episodes", "2", *TINY, "--queries", "12"])
    assert code == 2
    error = capsys.readouterr().err
    assert "--shots 1 + --queries 12 needs 13 images per class" in error and "have as few as 12" in error
    assert "classes have fewer:" in error and "(12)" in error
    assert not (tmp_path / "run").exists()


def test_a_folder_dataset_without_a_data_root_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--dataset", "folder", "--output", str(tmp_path / "run"), *TINY]) == 2
    assert "--dataset folder needs --data-root" in capsys.readouterr().err
