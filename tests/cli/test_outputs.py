"""Output paths are checked before the work (issue 25, item 8) and the command lines' messages name the user's
own flags and paths (item 9): one tiny folder run, then evaluate / search / zeroshot against it.

Tests run as root here, which the kernel lets write anywhere: a read-only place is shown by making
`os.access` answer as it does for everyone else, the check `fewshot.files.check_writable` relies on."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from PIL import Image

import fewshot.cli.evaluate
import fewshot.cli.runners.evaluate
import fewshot.cli.runners.search
import fewshot.cli.runners.zeroshot
from fewshot.cli.evaluate import main as evaluate_main
from fewshot.cli.search import main as search_main
from fewshot.cli.train import main as train_main
from fewshot.cli.zeroshot import main as zeroshot_main
from fewshot.files import atomic_write, check_writable
from fewshot.model.checkpoint import load_checkpoint, save_checkpoint
from tests.cli.test_folder import TINY
from tests.support.synthetic import write_image_folder
from tests.support.zeroshot_planted import write_synthetic_gbu


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("outputs") / "shapes", classes=15, per_class=8, size=32)


@pytest.fixture(scope="module")
def best(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("outputs-run") / "run"
    assert train_main(["--dataset", "folder", "--data-root", str(folder), "--output", str(output), "--episodes", "10",
                       *TINY]) == 0
    return output / "best.pt"


def read_only(monkeypatch: pytest.MonkeyPatch, *places: Path) -> None:
    """Make `places` (files or folders, not what is inside) unwritable to the check, as to a user without root."""
    real_access = os.access
    blocked = [str(place) for place in places]

    def access(path, mode, *args, **kwargs):  # noqa: ANN001, ANN202
        if mode & os.W_OK and str(path) in blocked:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def must_not_run(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    """The work itself fails the test: a refused output path must be refused before it."""
    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError(f"{name} ran before the output path was refused")
    monkeypatch.setattr(module, name, fail)


# --- fewshot.files.check_writable -----------------------------------------------------------------------

def test_check_writable_names_the_users_path_and_what(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_writable(tmp_path / "new" / "deeper" / "out.json", "--output") == tmp_path / "new" / "deeper" / "out.json"
    assert not (tmp_path / "new").exists()  # checking makes nothing
    with pytest.raises(ValueError, match=f"--output {tmp_path} is a directory; name a file"):
        check_writable(tmp_path, "--output")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=f"cannot write --output {tmp_path / 'file' / 'x.json'}: {tmp_path / 'file'} "
                                         "is a file, not a folder"):
        check_writable(tmp_path / "file" / "x.json", "--output")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "old.json").write_text("{}")
    read_only(monkeypatch, locked / "old.json")
    with pytest.raises(ValueError, match=f"cannot write --output {locked / 'old.json'}: the file is read-only"):
        check_writable(locked / "old.json", "--output")
    read_only(monkeypatch, locked)
    with pytest.raises(ValueError, match=f"no permission to write into the folder {locked}"):
        check_writable(locked / "new.json", "--output")
    with pytest.raises(ValueError, match=f"no permission to create folders in the folder {locked}"):
        check_writable(locked / "sub" / "new.json", "--output")


def test_atomic_write_names_the_users_file_never_its_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, dir=None, prefix="", suffix="", **kwargs):  # noqa: A002, ANN001, ANN002, ANN003, ANN202
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, prefix + "abcdefgh" + suffix))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as caught:
        atomic_write(tmp_path / "report.json", lambda file: file.write(b"{}"))
    assert caught.value.filename == str(tmp_path / "report.json")


# --- item 8: every output path before the work ---------------------------------------------------------

def test_evaluate_save_episodes_into_a_missing_folder_makes_it(best: Path, tmp_path: Path) -> None:
    base = tmp_path / "lists" / "new" / "episodes.json"
    assert evaluate_main([str(best), "--ways", "3", "--queries", "2", "--episodes", "2", "--no-progress", "--report",
                          str(tmp_path / "report.json"), "--save-episodes", str(base)]) == 0
    assert (tmp_path / "lists" / "new" / "episodes_3way1shot.json").is_file()


def test_evaluate_save_episodes_into_a_read_only_folder_is_refused_before_evaluating(
        best: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    must_not_run(monkeypatch, fewshot.cli.runners.evaluate, "evaluate_checkpoint")
    code = evaluate_main([str(best), "--ways", "3", "--queries", "2", "--episodes", "2", "--no-progress", "--report",
                          str(tmp_path / "report.json"), "--save-episodes", str(locked / "episodes.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot write --save-episodes {locked / 'episodes_3way1shot.json'}: no permission" in err
    assert ".partial" not in err and ".tmp" not in err


def test_search_calibrate_write_on_a_read_only_checkpoint_is_refused_before_calibrating(
        best: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    checkpoint = tmp_path / "best.pt"
    shutil.copy(best, checkpoint)
    read_only(monkeypatch, checkpoint)
    must_not_run(monkeypatch, fewshot.cli.runners.search, "calibrate")
    assert search_main(["calibrate", str(checkpoint), "--write"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the checkpoint (--write) {checkpoint}: the file is read-only" in err and ".tmp" not in err
    # in a read-only folder alike
    monkeypatch.undo()
    read_only(monkeypatch, tmp_path)
    must_not_run(monkeypatch, fewshot.cli.runners.search, "calibrate")
    assert search_main(["calibrate", str(checkpoint), "--write"]) == 2
    assert f"no permission to write into the folder {tmp_path}" in capsys.readouterr().err


def test_zeroshot_output_that_is_a_directory_or_read_only_is_refused_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    write_synthetic_gbu(tmp_path / "TOY")
    must_not_run(monkeypatch, fewshot.cli.runners.zeroshot, "load_gbu")
    common = ["--dataset", "TOY", "--data-root", str(tmp_path), "--quiet"]
    assert zeroshot_main([*common, "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is a directory; name a file" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    assert zeroshot_main([*common, "--output", str(locked / "report.json")]) == 2
    assert f"cannot write --output {locked / 'report.json'}: no permission" in capsys.readouterr().err


# --- item 9: messages that name the user's flags and paths ---------------------------------------------

def test_a_moved_data_folder_names_the_recorded_path_and_calibrate_takes_data_root(
        best: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    state = load_checkpoint(best)
    gone = str(tmp_path / "gone" / "shapes")
    state["config"]["data_root"] = gone  # as if the folder the run read had been moved away since
    checkpoint = save_checkpoint(tmp_path / "best.pt", state)
    assert evaluate_main([str(checkpoint), "--ways", "3", "--queries", "2", "--episodes", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"The run read its data from {gone}, which is no longer a folder; pass --data-root" in err
    assert search_main(["calibrate", str(checkpoint)]) == 2
    assert gone in capsys.readouterr().err
    assert search_main(["calibrate", str(checkpoint), "--data-root", str(moved), "--write"]) == 0
    assert "verification" in load_checkpoint(checkpoint)


def test_search_build_names_its_flag_for_unreadable_images(best: Path, folder: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    gallery = tmp_path / "gallery"
    shutil.copytree(folder, gallery)
    first_class = sorted(p for p in gallery.iterdir())[0]
    (first_class / "broken.png").write_bytes(b"not a png")
    assert search_main(["build", str(best), str(gallery), "--out", str(tmp_path / "index.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "(pass --skip-unreadable to leave them out)" in err
    assert "skip_unreadable=True" not in err


@pytest.mark.parametrize("command", ["train", "evaluate", "zeroshot"])
@pytest.mark.parametrize("value", ["100000000000000000000000", "-1", "1e23", str(2**63)])
def test_a_seed_out_of_range_is_a_usage_error_naming_the_flag(command: str, value: str,
                                                               capsys: pytest.CaptureFixture) -> None:
    argv = {"train": ["--seed", value], "evaluate": ["best.pt", "--seed", value],
            "zeroshot": ["--dataset", "CUB", "--seed", value]}[command]
    main = {"train": train_main, "evaluate": evaluate_main, "zeroshot": zeroshot_main}[command]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "argument --seed: expected a whole number in [0, 2**63 - 1]" in capsys.readouterr().err


def test_the_largest_seed_is_accepted(capsys: pytest.CaptureFixture) -> None:
    parser = fewshot.cli.evaluate.build_parser()
    assert parser.parse_args(["best.pt", "--seed", str(2**63 - 1)]).seed == 2**63 - 1


def test_rgba_gallery_images_are_read_on_white(best: Path, tmp_path: Path) -> None:
    """The one image rule at inference: a transparent image embeds as its white-composited copy."""
    from fewshot.inference.classifier import load

    model = load(best)
    rgba = Image.new("RGBA", (32, 32), (10, 200, 30, 0))  # green hidden under full transparency
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    assert (model.images_to_tensor([rgba]) == model.images_to_tensor([white])).all()
