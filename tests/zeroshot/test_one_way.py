"""Zero-shot episodes of one way are refused (issue 25): one class is always 100% accurate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fewshot.cli.zeroshot import main
from fewshot.zeroshot import evaluate_zero_shot
from fewshot.zeroshot.evaluate import episode_accuracies
from tests.support.zeroshot_planted import planted_problem, write_synthetic_gbu


def test_one_way_episodes_are_refused_before_training() -> None:
    data, _ = planted_problem(num_classes=12, num_unseen=4, attribute_dim=8, feature_dim=16, images_per_class=8)
    with pytest.raises(ValueError, match=r"ways \(--ways\) must be at least 2, got 1"):
        evaluate_zero_shot(data, ways=1, calibration="none", fusion_weight=0.5)
    with pytest.raises(ValueError, match="ways must be at least 2, got 1"):
        episode_accuracies(None, np.zeros((4, 16)), np.arange(4), np.zeros((4, 8)), np.arange(4), ways=1)


def test_a_single_unseen_class_gives_no_episode() -> None:
    data, _ = planted_problem(num_classes=12, num_unseen=1, attribute_dim=8, feature_dim=16, images_per_class=8)
    with pytest.raises(ValueError, match=r"5-way episodes over 1 class\(es\) have 1 way: an episode needs at least 2"):
        evaluate_zero_shot(data, ways=5, calibration="none", fusion_weight=0.5, shots=(0,))


def test_the_command_line_refuses_one_way_episodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_gbu(tmp_path / "TOY")
    output = tmp_path / "toy.json"
    assert main(["--dataset", "TOY", "--data-root", str(tmp_path), "--calibration", "0.05", "--fusion-weight", "0.5",
                 "--ways", "1", "--output", str(output), "--quiet"]) == 2
    assert "must be at least 2, got 1" in capsys.readouterr().err
    assert not output.exists()
