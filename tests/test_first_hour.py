"""docs/first-hour.md as a user runs it: every command of its fenced bash blocks, read from the page itself,
run as written in a directory holding `photos/` (26 classes of coloured shapes, 5 or 6 images each) and
`new_photos/`; only the episode counts are made small (the page says so)."""

from __future__ import annotations

import csv
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.synthetic import write_image_folder

from fewshot.cli import main as fewshot_main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "first-hour.md"
#: (command, flag) -> the small value the test runs with; every other word is the page's.
SMALL_COUNTS = {("train", "--episodes"): "4", ("train", "--val-every"): "2", ("train", "--val-episodes"): "2",
                ("train", "--test-episodes"): "2", ("evaluate", "--episodes"): "2"}


def page_commands(page: Path = PAGE) -> list[list[str]]:
    """The `python -m fewshot...` commands of the page's ```bash blocks, as argument lists from the command name on."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            assert words[:2] == ["python", "-m"] and words[2].startswith("fewshot"), line
            module = words[2].split(".", 1)
            commands.append(([module[1]] if len(module) == 2 else []) + words[3:])
    return commands


def with_small_counts(command: list[str]) -> list[str]:
    """`command` with the episode counts of SMALL_COUNTS replaced, nothing else."""
    words = list(command)
    for i, word in enumerate(words[:-1]):
        if (words[0], word) in SMALL_COUNTS:
            words[i + 1] = SMALL_COUNTS[(words[0], word)]
    return words


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """photos/<class>/<i>.png (26 classes, odd ones with 5 images) and new_photos/IMG_000<i>.jpg, as the cwd."""
    photos = write_image_folder(tmp_path / "photos", classes=26, per_class=6, size=32)
    for index, folder in enumerate(sorted(photos.iterdir())):
        if index % 2:
            (folder / "005.png").unlink()
    new = write_image_folder(tmp_path / "drawn", classes=3, per_class=1, size=32, seed=7, ext="jpg")
    (tmp_path / "new_photos").mkdir()
    for i, image in enumerate(sorted(new.rglob("*.jpg")), start=1):
        shutil.copy(image, tmp_path / "new_photos" / f"IMG_{i:04d}.jpg")
    shutil.rmtree(new)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_page_lists_each_step_once() -> None:
    names = [command[0] for command in page_commands()]
    assert names == ["train", "evaluate", "embed", "predict", "search", "search"]
    train = page_commands()[0]
    assert train[train.index("--episodes") + 1] == "2000"  # the page shows real counts; the test shortens them


def test_every_command_of_the_page_runs_as_written(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for command in page_commands():
        code = fewshot_main(with_small_counts(command))
        captured = capsys.readouterr()
        assert code == 0, f"{' '.join(command)} exited {code}:\n{captured.err[-3000:]}"
        outputs.append(captured)
    train, evaluate, embed, predict, build, query = outputs
    assert "train ways: 16 (the folder random train split has 16 classes; default 60)" in train.err
    assert (workspace / "runs" / "photos" / "best.pt").is_file()
    assert "5-way 1-shot" in evaluate.out + evaluate.err
    embeddings = np.load(workspace / "photos.npy")
    with open(workspace / "photos.files.csv", newline="") as file:
        files = list(csv.DictReader(file))
    assert embeddings.shape[0] == len(files) == 26 * 6 - 13
    with open(workspace / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [Path(row["file"]).name for row in rows] == ["IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg"]
    assert (workspace / "photos.index").is_file()
    assert (workspace / "photos.index.query.png").is_file()


def test_the_benchmarks_run_from_any_directory(tmp_path: Path) -> None:
    """`python -m benchmarks.NAME` from a directory other than the repository's (found, not run: they are long)."""
    found = subprocess.run([sys.executable, "-c", "import importlib.util; "
                            "print(importlib.util.find_spec('benchmarks.omniglot_load').origin)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found) == PAGE.parents[1] / "benchmarks" / "omniglot_load.py"
