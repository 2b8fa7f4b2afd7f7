"""Evaluation settings that measure nothing are refused before anything is embedded (issue 25): 1-way
episodes (always 100%), and a test-time shift of half the image or more (views of mostly background)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewshot.cli.evaluate import main
from fewshot.data import DATASETS, load_splits
from fewshot.evaluation import EvaluationSettings, evaluate_checkpoint
from fewshot.evaluation.cache import SplitEmbeddings
from fewshot.evaluation.views import check_shift, compose_views
from fewshot.model.checkpoint import model_from_checkpoint
from tests.evaluation.test_cache import tiny_run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return tiny_run(tmp_path_factory.mktemp("refused") / "run", data_root)


def test_one_way_episodes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"--ways must be at least 2, got 1: a 1-way episode has one class"):
        EvaluationSettings(ways_shots=[(5, 1), (1, 1)])


def test_the_command_line_refuses_one_way_episodes(checkpoint: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    code = main([str(checkpoint), "--ways", "1", "--episodes", "3", "--queries", "5", "--report", str(report),
                 "--no-progress"])
    assert code == 2 and "--ways must be at least 2, got 1" in capsys.readouterr().err
    assert not report.exists()


def test_a_shift_of_half_the_image_or_more_is_refused() -> None:
    check_shift(13, 28, 28)  # every view keeps 15 of the 28 columns or rows
    with pytest.raises(ValueError, match=r"--test-time-shift 14 moves 28x28 images by half their side or more.*"
                                         r"use at most 13 pixels"):
        check_shift(14, 28, 28)
    with pytest.raises(ValueError, match="use at most 9 pixels"):
        check_shift(10, 28, 20)  # the shorter side counts


def test_a_shift_too_large_for_the_images_fails_before_anything_is_embedded(checkpoint: Path, data_root: Path,
                                                                            capsys: pytest.CaptureFixture[str],
                                                                            tmp_path: Path) -> None:
    model, _ = model_from_checkpoint(checkpoint)
    test = load_splits("omniglot", "vinyals", data_root).test
    with pytest.raises(ValueError, match="--test-time-shift 28 moves 28x28 images"):
        SplitEmbeddings(model, test, views=compose_views({"shift": 28}, DATASETS["omniglot"]))
    SplitEmbeddings(model, test, views=compose_views({"shift": 13}, DATASETS["omniglot"]))
    with pytest.raises(ValueError, match="--test-time-shift 100 moves 28x28 images"):
        evaluate_checkpoint(checkpoint, views={"shift": 100}, episodes=2, progress=False)
    report = tmp_path / "report.json"
    code = main([str(checkpoint), "--test-time-shift", "30", "--episodes", "3", "--queries", "5", "--report",
                 str(report), "--no-progress"])
    assert code == 2 and "--test-time-shift 30 moves 28x28 images" in capsys.readouterr().err
    assert not report.exists()
