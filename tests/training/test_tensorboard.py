"""The optional TensorBoard log of a run (`--tensorboard`): the curves of metrics.jsonl read back from the event
files, a resumed run appending without duplicate steps, nothing written or imported without the flag, and a clear
refusal when the package is missing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.training.test_loop import read_log, run_args, run_main

EPISODES = 20


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's TensorBoard log, as (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def expected_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What the TensorBoard log must show: metrics.jsonl's records."""
    log = read_log(run_dir)
    series = {"train/loss": ("train", "loss"), "train/accuracy": ("train", "accuracy"),
              "train/learning_rate": ("train", "lr"), "val/accuracy": ("val", "accuracy"), "val/ci95": ("val", "ci95")}
    return {tag: [(r["episode"], r[key]) for r in log if r["kind"] == kind] for tag, (kind, key) in series.items()}


def assert_same_curves(run_dir: Path) -> None:
    found, expected = scalars(run_dir), expected_scalars(run_dir)
    assert sorted(found) == sorted(expected)
    for tag, points in expected.items():
        assert [step for step, _ in found[tag]] == [step for step, _ in points], tag
        assert [value for _, value in found[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag


def test_the_tensorboard_log_mirrors_the_metrics_and_a_resume_appends_without_duplicates(data_root: Path,
                                                                                        tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    code, _, stderr = run_main(run_args(run_dir, data_root, EPISODES, ("--tensorboard",)))
    assert code == 0, stderr
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "config.json").read_text())["tensorboard"] is True
    assert_same_curves(run_dir)
    assert [step for step, _ in scalars(run_dir)["val/accuracy"]] == [10, 20]

    # A run killed after writing episodes its last.pt does not cover: resumed from episode 20 twice, the second
    # time after episodes 21 to 30 were logged, so TensorBoard must hide the first attempt's (purge_step).
    shutil.copy(run_dir / "last.pt", tmp_path / "last-20.pt")
    code, _, stderr = run_main(run_args(run_dir, data_root, 30, ("--tensorboard", "--resume")))
    assert code == 0, stderr
    shutil.copy(tmp_path / "last-20.pt", run_dir / "last.pt")
    code, _, stderr = run_main(run_args(run_dir, data_root, 30, ("--tensorboard", "--resume")))
    assert code == 0, stderr
    assert [step for step, _ in scalars(run_dir)["train/loss"]] == list(range(1, 31))
    assert_same_curves(run_dir)

    # --overwrite starts the curves over too.
    code, _, stderr = run_main(run_args(run_dir, data_root, 10, ("--tensorboard", "--overwrite")))
    assert code == 0, stderr
    assert [step for step, _ in scalars(run_dir)["train/loss"]] == list(range(1, 11))


def test_a_resumed_run_that_turns_the_log_on_gets_the_curves_from_the_first_episode(data_root: Path,
                                                                                   tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    code, _, stderr = run_main(run_args(run_dir, data_root, 10))
    assert code == 0, stderr
    code, _, stderr = run_main(run_args(run_dir, data_root, EPISODES, ("--tensorboard", "--resume")))
    assert code == 0, stderr
    assert [step for step, _ in scalars(run_dir)["train/loss"]] == list(range(1, EPISODES + 1))
    assert_same_curves(run_dir)


def test_without_the_flag_nothing_is_written_and_tensorboard_is_not_imported(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    program = ("import sys\nfrom fewshot.cli.train import main\ncode = main(sys.argv[1:])\n"
               "loaded = sorted(name for name in sys.modules if 'tensorboard' in name)\n"
               "assert not loaded, loaded\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", program, *run_args(run_dir, data_root, 10)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not (run_dir / "tensorboard").exists()
    assert json.loads((run_dir / "config.json").read_text())["tensorboard"] is False


def test_asking_for_the_log_without_tensorboard_is_refused_before_the_run_starts(data_root: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def without_tensorboard(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "tensorboard" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_tensorboard)
    run_dir = tmp_path / "run"
    code, _, stderr = run_main(run_args(run_dir, data_root, 10, ("--tensorboard",)))
    assert code == 2
    assert "pip install tensorboard" in stderr
    assert not run_dir.exists()
