"""The installed packages win over same-named folders in the working directory.

Few-shot users keep folders of saved episodes: an `episodes/` (or `fewshot/`) folder without `__init__.py` in the
directory a command runs from must not shadow the installed packages. Under setuptools' finder-based editable
install, Python's path finder met the folder in the working directory first and made it a namespace package, so
`from episodes import EpisodeSampler` failed with "unknown location". The project's editable install is
path-based (`[tool.setuptools] package-dir` in pyproject.toml), where a regular package anywhere on `sys.path`
beats a namespace portion; a plain install behaves the same.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cluttered_directory(tmp_path: Path) -> Path:
    """A working directory holding `episodes/` and `fewshot/` folders of a user's own files (no `__init__.py`)."""
    (tmp_path / "episodes").mkdir()
    (tmp_path / "episodes" / "episode_0001.json").write_text("{}")
    (tmp_path / "fewshot").mkdir()
    (tmp_path / "fewshot" / "notes.txt").write_text("my runs")
    return tmp_path


def run_in(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` run from `directory` with the installed packages only (no PYTHONPATH of the repository)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=directory, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module", autouse=True)
def installed():
    try:
        importlib.metadata.distribution("fewshot")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fewshot is not installed in this interpreter (run scripts/setup.sh)")


def test_installed_packages_win_over_folders_in_the_working_directory(cluttered_directory: Path):
    code = ("import episodes, fewshot, fewshot.cli; from episodes import EpisodeSampler; "
            "print(episodes.__file__); print(fewshot.__file__)")
    result = run_in(cluttered_directory, "-c", code)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert line.endswith("__init__.py") and not Path(line).is_relative_to(cluttered_directory), line


def test_zeroshot_help_runs_beside_an_episodes_folder(cluttered_directory: Path):
    result = run_in(cluttered_directory, "-m", "fewshot.zeroshot", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout

