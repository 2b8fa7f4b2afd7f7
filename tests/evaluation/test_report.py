"""Report files: default names that keep each evaluation mode apart, and a plot that reads for one setting."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.figure
import pytest
from PIL import Image

from fewshot.evaluation import default_report_path, plot_report


def test_default_report_names_include_the_mode(tmp_path: Path) -> None:
    best = tmp_path / "a" / "best.pt"
    other = tmp_path / "b" / "best.pt"
    names = [default_report_path(best).name,
             default_report_path(best, compare=other).name,
             default_report_path(best, ensemble=[other]).name,
             default_report_path(best, shift=2).name,
             default_report_path(best, rotations=True, mirror=True).name,
             default_report_path(best, "val", ensemble=[other], shift=2, rotations=True).name,
             default_report_path(best, episode_kind="within-parent").name,
             default_report_path(best, episode_kind="meta-dataset").name]
    assert names == ["eval_best_test.json", "eval_best_test_vs-b-best.json", "eval_best_test_ensemble2.json",
                     "eval_best_test_shift2.json", "eval_best_test_rotations_mirror.json",
                     "eval_best_val_ensemble2_shift2_rotations.json", "eval_best_test_within-parent.json",
                     "eval_best_test_meta-dataset.json"]
    assert len(set(names)) == len(names) and default_report_path(best).parent == best.parent


def report(*settings: tuple[int, int]) -> dict:
    return {"dataset": "folder", "eval_split": "test",
            "results": [{"ways": w, "shots": s, "accuracy": 0.5 + 0.01 * s, "ci95": 0.02} for w, s in settings]}


@pytest.mark.parametrize("settings", [[(5, 1)], [(5, 1), (20, 1)], [(5, 1), (5, 5)]])
def test_the_plot_is_a_readable_chart(tmp_path: Path, settings: list, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = {}
    original = matplotlib.figure.Figure.savefig

    def keep(figure, *args, **kwargs):
        drawn["axes"] = figure.axes[0]
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot_report(report(*settings), tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").size[0] > 100
    axes = drawn["axes"]
    if len({s for _, s in settings}) == 1:  # one shot count: a bar per setting, named, never one lone point
        assert len(axes.patches) == len(settings)
        assert [label.get_text() for label in axes.get_xticklabels()] == [f"{w}-way {s}-shot" for w, s in settings]
    else:  # shots on the x axis at whole numbers only
        assert sorted(axes.get_xticks()) == [1, 5]
