"""Test-time views: each image embedded as the mean of itself and its copies shifted 1..K pixels
left, right, up and down, and each episode scored in its quarter-turned and mirrored copies with the
scores summed, in the evaluator's embed-once path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.model.checkpoint import model_from_checkpoint
from fewshot.data import load_splits
from fewshot.evaluation import evaluate_checkpoint, evaluation_episodes
from fewshot.cli.evaluate import main
from fewshot.evaluation.cache import SplitEmbeddings
from fewshot.data import DATASETS
from fewshot.evaluation.views import COPIES, VIEWS, ViewKind, compose_views, shift_views, shifted, turn_views, turned
from fewshot.learners.base import prototype_logits
from tests.evaluation.test_cache import tiny_run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return tiny_run(tmp_path_factory.mktemp("shift") / "run", data_root)


def test_shifted_moves_the_image_and_fills_the_border_with_zero() -> None:
    image = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    right = shifted(image, 1, 0, fill=0.0)
    assert torch.equal(right[0, 0, :, 1:], image[0, 0, :, :3]) and not right[0, 0, :, 0].any()
    up = shifted(image, 0, -2, fill=0.0)
    assert torch.equal(up[0, 0, :2], image[0, 0, 2:]) and not up[0, 0, 2:].any()
    assert shifted(image, 0, 0, fill=0.0) is image
    assert shift_views(2) == [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2)]
    with pytest.raises(ValueError, match="whole number of pixels >= 0, got -1"):
        shift_views(-1)


def test_the_accuracies_are_those_of_the_averaged_embeddings(checkpoint: Path, data_root: Path) -> None:
    report = evaluate_checkpoint(checkpoint, ways_shots=[(5, 1)], queries=5, episodes=10, seed=2, progress=False,
                                 views={"shift": 1})
    plain = evaluate_checkpoint(checkpoint, ways_shots=[(5, 1)], queries=5, episodes=10, seed=2, progress=False)
    model, _ = model_from_checkpoint(checkpoint)
    test = load_splits("omniglot", "vinyals", data_root).test
    expected = []
    for episode in evaluation_episodes(test, 5, 1, 5, 10, seed=2):
        support_x, support_y, query_x, query_y = test.episode_tensors(episode)
        with torch.no_grad():  # by hand: five embeddings of each image, averaged
            support = torch.stack([model.embed(shifted(support_x, dx, dy, fill=0.0)) for dx, dy in shift_views(1)]).mean(0)
            query = torch.stack([model.embed(shifted(query_x, dx, dy, fill=0.0)) for dx, dy in shift_views(1)]).mean(0)
        logits = prototype_logits(model.learner.scoring_distance, support, support_y, query, 5)
        expected.append((logits.argmax(1) == query_y).float().mean().item())
    np.testing.assert_allclose(report["results"][0]["per_episode"], expected, atol=1e-6)
    assert report["test_time_shift"]["max_shift"] == 1 and len(report["test_time_shift"]["views"]) == 5
    assert "test_time_shift" not in plain
    # The views change the embeddings (else the test could not tell averaging from none).
    cache, averaged = SplitEmbeddings(model, test), SplitEmbeddings(model, test, views=compose_views({"shift": 1}, DATASETS["omniglot"]))
    items = np.arange(20)
    cache.ensure(items), averaged.ensure(items)
    assert not torch.allclose(cache.rows(items), averaged.rows(items))


def test_shift_averaging_refuses_the_paths_it_does_not_apply_to(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="cannot be combined with per-episode embedding"):
        evaluate_checkpoint(checkpoint, per_episode=True, views={"shift": 1}, episodes=2, progress=False)
    with pytest.raises(ValueError, match="evaluate them without views"):
        evaluate_checkpoint(checkpoint, embedding_metrics=True, views={"shift": 1}, episodes=2, progress=False)


def test_the_command_line_reports_the_views(checkpoint: Path, tmp_path: Path, capsys) -> None:
    code = main([str(checkpoint), "--test-time-shift", "2", "--episodes", "3", "--queries", "5",
                 "--report", str(tmp_path / "r.json"), "--no-progress"])
    assert code == 0
    assert "test-time shift averaging: 9 views (shifts up to 2 px)" in capsys.readouterr().out
    code = main([str(checkpoint), "--test-time-shift", "-1", "--report", str(tmp_path / "s.json")])
    assert code == 2 and "got -1" in capsys.readouterr().err


def test_turned_copies_rotate_and_mirror() -> None:
    image = torch.arange(1, 5, dtype=torch.float32).view(1, 1, 2, 2)  # [[1, 2], [3, 4]]
    assert turned(image, 0, False) is image
    assert turned(image, 1, False)[0, 0].tolist() == [[2, 4], [1, 3]]  # a quarter turn counter-clockwise
    assert turned(image, 0, True)[0, 0].tolist() == [[2, 1], [4, 3]]
    assert turned(image, 2, True)[0, 0].tolist() == [[3, 4], [1, 2]]  # mirrored, then a half turn
    assert turn_views() == [(0, False)]
    assert turn_views(rotations=True) == [(0, False), (1, False), (2, False), (3, False)]
    assert turn_views(mirror=True) == [(0, False), (0, True)]
    assert len(set(turn_views(True, True))) == 8
    with pytest.raises(ValueError, match="need square images, got 2x3"):
        turned(torch.zeros(1, 1, 2, 3), 1, False)


@pytest.fixture(scope="module")
def metric_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return tiny_run(tmp_path_factory.mktemp("shift-metric") / "run", data_root, metric="mahalanobis-diag")


@pytest.mark.parametrize("which", ["checkpoint", "metric_checkpoint"])
def test_turned_copies_are_scored_one_by_one_and_their_scores_summed(which: str, request, data_root: Path) -> None:
    checkpoint = request.getfixturevalue(which)  # squared Euclidean, and a learned metric of the embedding's own size
    options = dict(ways_shots=[(5, 1)], queries=5, episodes=10, seed=3, progress=False)
    report = evaluate_checkpoint(checkpoint, views={"rotations": True, "mirror": True, "shift": 1}, **options)
    model, _ = model_from_checkpoint(checkpoint)
    test = load_splits("omniglot", "vinyals", data_root).test
    copies = turn_views(True, True)
    shifts = compose_views({"shift": 1}, DATASETS["omniglot"])
    expected = []
    for episode in evaluation_episodes(test, 5, 1, 5, 10, seed=3):
        support_x, support_y, query_x, query_y = test.episode_tensors(episode)
        logits = 0
        for quarter_turns, mirror in copies:  # by hand: each turned copy of the episode scored alone, logits summed
            s = shifts.embed(model, turned(support_x, quarter_turns, mirror))
            q = shifts.embed(model, turned(query_x, quarter_turns, mirror))
            logits = logits + prototype_logits(model.learner.scoring_distance, s, support_y, q, 5)
        expected.append((logits.argmax(1) == query_y).float().mean().item())
    np.testing.assert_allclose(report["results"][0]["per_episode"], expected, atol=1e-6)
    assert report["test_time_turns"]["copies"] == [list(c) for c in copies]
    assert report["embedding"]["matrix_bytes"][0] == 8 * 4 * model.embed(test.to_float(test.gather(np.arange(1)))).shape[1] \
        * report["embedding"]["images_embedded"][0]
    plain = evaluate_checkpoint(checkpoint, **options)
    assert "test_time_turns" not in plain and "test_time_turns" not in evaluate_checkpoint(checkpoint, views={"shift": 1}, **options)


def test_the_command_line_reports_the_turned_copies(checkpoint: Path, tmp_path: Path, capsys) -> None:
    code = main([str(checkpoint), "--test-time-rotations", "--episodes", "3", "--queries", "5",
                 "--report", str(tmp_path / "r.json"), "--no-progress"])
    assert code == 0
    assert "test-time turned copies: 4 (quarter turns), scores summed over the copies" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cannot be combined with per-episode embedding"):
        evaluate_checkpoint(checkpoint, per_episode=True, views={"mirror": True}, episodes=2, progress=False)


def test_the_shift_fill_is_the_dataset_background() -> None:
    image = torch.zeros(1, 1, 4, 4)
    omniglot = DATASETS["omniglot"]
    assert omniglot.background == 0.0  # inverted images: paper is 0
    paper = dataclasses.replace(omniglot, background=1.0)  # a dataset whose empty pixels are white
    for dataset, fill in ((omniglot, 0.0), (paper, 1.0)):
        views = compose_views({"shift": 1}, dataset)
        (_, right), = [(label, t) for label, t in views.averaged_views if label == ((1, 0),)]
        assert right(image)[0, 0, :, 0].eq(fill).all() and right(image)[0, 0, :, 1:].eq(0).all()
    assert compose_views({"shift": 2}, omniglot).report() == {"test_time_shift": {"max_shift": 2, "views": shift_views(2)}}
    assert not compose_views({}, omniglot).on and compose_views({}, omniglot).copies == 1
    with pytest.raises(ValueError, match="unknown test-time view 'blur'; valid names: shift, mirror, rotations"):
        compose_views({"blur": 1}, omniglot)
    with pytest.raises(ValueError, match="rotations setting must be True or False, got 'yes'"):
        compose_views({"rotations": "yes"}, omniglot)


def test_a_registered_view_kind_plugs_into_the_evaluator(checkpoint: Path) -> None:
    upside_down = ViewKind(COPIES, lambda on, dataset: [(False, lambda x: x), *([(True, lambda x: x.flip(-2))] if on else [])],
                           off=False, report_key="upside_down")
    VIEWS.register("upside_down", upside_down)
    try:
        options = dict(ways_shots=[(5, 1)], queries=5, episodes=4, seed=0, progress=False)
        report = evaluate_checkpoint(checkpoint, views={"upside_down": True, "mirror": True}, **options)
    finally:
        VIEWS.unregister("upside_down")
    turns = report["test_time_turns"]
    assert turns["upside_down"] is True and turns["mirror"] is True and turns["rotations"] is False
    # Copies are named fastest-varying kind first: (upside down, quarter turns, mirrored).
    assert turns["copies"] == [[False, 0, False], [True, 0, False], [False, 0, True], [True, 0, True]]
