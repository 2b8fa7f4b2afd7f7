"""`--min-images-per-class` (issue 29): a folder whose classes hold 5 or 6 images, trained and evaluated from the
command line; the classes left out are listed in the run directory, on stderr and in the evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewshot.cli.evaluate import main as evaluate_main
from fewshot.cli.train import main as train_main
from tests.support.synthetic import write_image_folder

TINY = ["--ways", "3", "--shots", "1", "--train-ways", "3", "--val-every", "4", "--val-episodes", "2",
        "--test-episodes", "4", "--checkpoint-every", "4", "--threads", "1", "--no-progress", "--image-size", "16"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ 8, val/ 4, test/ 4 classes of 6 images; the first class of each split holds 5."""
    root = write_image_folder(tmp_path_factory.mktemp("uneven") / "shapes", classes=16, per_class=6, size=16,
                              split_folders=True)
    for split in ("train", "val", "test"):
        sorted(sorted((root / split).iterdir())[0].iterdir())[-1].unlink()
    return root


@pytest.fixture(scope="module")
def run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("min-images") / "run"
    assert train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(output), "--episodes", "4",
                       "--queries", "5", "--eval-queries", "5", "--min-images-per-class", "6", *TINY]) == 0
    return output


def test_the_run_lists_the_classes_it_left_out(run: Path, folder: Path) -> None:
    dropped = json.loads((run / "dropped_classes.json").read_text())
    assert dropped["min_images"] == 6
    for split in ("train", "val", "test"):
        first = sorted((folder / split).iterdir())[0].name
        assert dropped["classes"][split] == [{"name": first, "images": 5}]
    recorded = json.loads((run / "splits.json").read_text())
    assert len(recorded["train"]) == 7 and len(recorded["val"]) == 3 and recorded["options"]["min_images"] == 6
    assert json.loads((run / "config.json").read_text())["dataset_args"] == {"min_images": 6}


def test_the_left_out_classes_are_said_on_stderr(folder: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(tmp_path / "run"),
                       "--episodes", "1", *TINY, "--val-every", "100", "--test-episodes", "2", "--queries", "5",
                       "--eval-queries", "5", "--dataset-arg", "min_images=6"]) == 0
    assert (f"min_images=6: left out 1 train, 1 val and 1 test classes of fewer images, listed in "
            f"{tmp_path / 'run' / 'dropped_classes.json'}") in capsys.readouterr().err


def test_without_the_flag_the_queries_are_lowered_and_the_flag_is_named(folder: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(tmp_path / "run"),
                       "--episodes", "1", *TINY, "--val-every", "100", "--test-episodes", "2"]) == 0
    error = capsys.readouterr().err
    assert "queries: 4 (the folder folders train split has classes of 5 images, 1 of them support; default 5)" in error
    assert ("(--min-images-per-class 6 keeps 5 queries, leaving out the classes of fewer images: 1 train, 1 val, "
            "1 test)") in error
    assert "--min-images-per-class 16" not in error  # it would leave no class: not offered
    assert not (tmp_path / "run" / "dropped_classes.json").exists()
    code = train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(tmp_path / "given"),
                       "--episodes", "1", *TINY, "--queries", "5"])
    assert code == 2
    assert "leave out the smaller classes with --min-images-per-class 6" in capsys.readouterr().err


def test_the_flag_is_refused_where_it_cannot_apply(folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--dataset", "omniglot", "--output", str(tmp_path / "a"), "--min-images-per-class", "6"]) == 2
    assert "the omniglot loader has no min_images option" in capsys.readouterr().err
    assert train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(tmp_path / "b"),
                       "--min-images-per-class", "6", "--dataset-arg", "min_images=5"]) == 2
    assert "give it once" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_evaluation_says_what_it_did_with_small_classes(run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    # The checkpoint's own min_images: the same 3 test classes, the one left out listed.
    assert evaluate_main([str(run / "best.pt"), "--ways", "3", "--queries", "5", "--episodes", "4",
                          "--report", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert report["classes"] == 3 and report["dropped_classes"]["dataset"]["min_images"] == 6
    assert [c["images"] for c in report["dropped_classes"]["dataset"]["classes"]] == [5]
    assert "left out: 1 test classes of fewer than 6 images (the data's min_images option" in capsys.readouterr().out
    # Too many queries: the error says what to lower, and which flag keeps the larger classes.
    assert evaluate_main([str(run / "best.pt"), "--ways", "3", "--queries", "15", "--episodes", "4",
                          "--report", str(report_path), "--no-progress"]) == 2
    assert "lower --queries to 5 or less" in capsys.readouterr().err
    assert evaluate_main([str(run / "best.pt"), "--ways", "2", "--queries", "5", "--episodes", "4",
                          "--min-images-per-class", "7", "--report", str(report_path), "--no-progress"]) == 2
    assert "--min-images-per-class 7 leaves 0 of the 3 classes" in capsys.readouterr().err


def test_evaluation_leaves_out_small_classes_when_asked(folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    assert train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(output), "--episodes", "1",
                       *TINY, "--val-every", "100", "--test-episodes", "2"]) == 0
    report_path = tmp_path / "report.json"
    assert evaluate_main([str(output / "best.pt"), "--ways", "3", "--queries", "5", "--episodes", "4",
                          "--min-images-per-class", "6", "--compare", str(output / "last.pt"),
                          "--report", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert report["classes"] == 3 and "dataset" not in report["dropped_classes"]
    assert report["dropped_classes"]["evaluation"] == {
        "min_images": 6, "classes": [{"name": sorted((folder / "test").iterdir())[0].name, "images": 5}]}
