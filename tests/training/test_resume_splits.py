"""--resume on a user's folder that changed since the run started (issue 25, item 1): the split recorded in the
run is the split. A class folder that appeared, vanished or changed is named and refused; the dataset option
new_classes=ignore leaves new classes out, and no class ever moves between splits."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fewshot.cli.train import main as train_main
from fewshot.model.checkpoint import load_checkpoint
from tests.support.synthetic import write_image_folder

TINY = ["--dataset", "folder", "--ways", "2", "--shots", "1", "--train-ways", "3", "--queries", "2",
        "--eval-queries", "2", "--val-every", "5", "--val-episodes", "2", "--test-episodes", "4",
        "--checkpoint-every", "5", "--threads", "1", "--no-progress", "--image-size", "16"]
EPISODES = 10


def train_args(data: Path, output: Path, episodes: int, *extra: str) -> list[str]:
    return [*TINY, "--data-root", str(data), "--output", str(output), "--episodes", str(episodes), *extra]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of 12 classes (random split: 7 train, 2 val, 3 test) and a finished 10-episode run on it."""
    base = tmp_path_factory.mktemp("resume-splits")
    data = write_image_folder(base / "data", classes=12, per_class=7, size=16)
    output = base / "run"
    assert train_main(train_args(data, output, EPISODES)) == 0
    return data, output


@pytest.fixture
def copies(started: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """The data folder and the run directory, copied so that a test may change them."""
    data, output = started
    return Path(shutil.copytree(data, tmp_path / "data")), Path(shutil.copytree(output, tmp_path / "run"))


def add_class(root: Path, name: str, scratch: Path) -> None:
    """A new class folder `root/name` of images unlike any other (another seed)."""
    extra = write_image_folder(scratch / f"extra-{name}", classes=1, per_class=7, size=16, seed=7)
    (extra / os.listdir(extra)[0]).rename(root / name)


def resume(data: Path, output: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = train_main(train_args(data, output, 2 * EPISODES, "--resume", *extra))
    return code, capsys.readouterr().err


def test_resume_on_the_unchanged_folder_keeps_the_split(copies: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data, output = copies
    recorded = json.loads((output / "splits.json").read_text())
    assert len(recorded["fingerprints"]) == 12  # every class identified by its content
    code, _ = resume(data, output, capsys)
    assert code == 0
    now = json.loads((output / "splits.json").read_text())
    assert {k: v for k, v in now.items() if k != "options"} == {k: v for k, v in recorded.items() if k != "options"}
    state = load_checkpoint(output / "last.pt")
    assert state["episode"] == 2 * EPISODES
    assert state["split_classes"] == {name: recorded[name] for name in ("train", "val", "test")}


def test_a_class_folder_added_before_resume_is_named_and_refused(copies: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data, output = copies
    recorded = (output / "splits.json").read_text()
    add_class(data, "00_new_class", tmp_path)  # sorts first: the seeded split of 13 classes moves many classes
    code, stderr = resume(data, output, capsys)
    assert code != 0
    assert "'00_new_class'" in stderr and "appeared" in stderr and "new_classes=ignore" in stderr
    assert (output / "splits.json").read_text() == recorded  # the run's record is untouched
    assert load_checkpoint(output / "last.pt")["episode"] == EPISODES


def test_new_classes_ignore_leaves_the_new_class_out_and_moves_none(copies: tuple[Path, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data, output = copies
    recorded = json.loads((output / "splits.json").read_text())
    add_class(data, "00_new_class", tmp_path)
    with pytest.warns(UserWarning, match="left out 1 class.*'00_new_class'"):
        code, stderr = resume(data, output, capsys, "--dataset-arg", "new_classes=ignore")
    assert code == 0, stderr
    now = json.loads((output / "splits.json").read_text())
    assert {name: now[name] for name in ("train", "val", "test")} == \
        {name: recorded[name] for name in ("train", "val", "test")}
    state = load_checkpoint(output / "last.pt")
    assert state["episode"] == 2 * EPISODES and state["train_classes"] == recorded["train"]
    report = json.loads((output / "test_report.json").read_text())
    assert report["classes"] == len(recorded["test"])


def test_a_class_folder_removed_before_resume_is_named_and_refused(copies: tuple[Path, Path],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data, output = copies
    gone = json.loads((output / "splits.json").read_text())["test"][0]
    shutil.rmtree(data / gone)
    code, stderr = resume(data, output, capsys, "--dataset-arg", "new_classes=ignore")
    assert code != 0 and f"no longer in the data: {gone!r}" in stderr


def test_a_class_whose_images_changed_before_resume_is_named_and_refused(copies: tuple[Path, Path],
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data, output = copies
    edited = json.loads((output / "splits.json").read_text())["train"][0]
    Image.new("RGB", (16, 16), "white").save(data / edited / "000.png")
    code, stderr = resume(data, output, capsys)
    assert code != 0 and "changed content" in stderr and repr(edited) in stderr
