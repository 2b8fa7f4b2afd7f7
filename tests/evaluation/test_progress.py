"""No silent waits: the long phases of evaluation (episode scoring, the retrieval and k-means of the embedding
metrics, calibration after its embedding bar) say on stderr what they are doing when progress is on, print
nothing when it is off, never write to stdout, and give the same numbers either way."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.data import load_splits
from fewshot.evaluation import embedding_metrics, evaluate_model
from fewshot.evaluation.calibration import calibrate
from fewshot.evaluation.episodes import terminal_progress
from fewshot.model.network import FewShotModel, ModelSpec


@pytest.fixture(scope="module")
def splits(data_root: Path):
    return load_splits("omniglot", "vinyals", data_root)


@pytest.fixture(scope="module")
def model() -> FewShotModel:
    torch.manual_seed(0)
    return FewShotModel(ModelSpec()).eval()


def test_embedding_metrics_name_their_retrieval_and_clustering_phases(model: FewShotModel, splits,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    quiet = embedding_metrics(model, splits.val, splits.test, torch.device("cpu"), pairs=500)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    shown = embedding_metrics(model, splits.val, splits.test, torch.device("cpu"), pairs=500, progress=True)
    out, err = capfd.readouterr()
    assert shown == quiet
    assert out == ""
    assert "embedding metrics: retrieval over" in err and "k-means clustering" in err
    assert "embedding" in err  # the embedding bar of each split


def test_calibration_says_what_it_does_after_its_embedding_bar(model: FewShotModel, splits,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    quiet = calibrate(model, splits.val, pairs=500, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    shown = calibrate(model, splits.val, pairs=500, progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "calibrating: scoring" in err and "open-set threshold" in err
    assert shown["pair"]["threshold"] == quiet["pair"]["threshold"]
    assert shown["open_set"]["threshold"] == quiet["open_set"]["threshold"]


def test_evaluate_model_shows_progress_on_a_terminal_and_is_quiet_otherwise(model: FewShotModel, splits,
                                                                          capfd: pytest.CaptureFixture[str],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert not terminal_progress()  # under pytest stderr is captured: the default is quiet
    quiet = evaluate_model(model, splits.test, 5, 1, 5, episodes=10, seed=0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a person watching
    shown = evaluate_model(model, splits.test, 5, 1, 5, episodes=10, seed=0)
    out, err = capfd.readouterr()
    assert out == "" and "scoring 5-way 1-shot" in err
    np.testing.assert_array_equal(shown, quiet)
    evaluate_model(model, splits.test, 5, 1, 5, episodes=10, seed=0, progress=False)
    assert capfd.readouterr() == ("", "")
