"""`python -m fewshot recipe protonet-colour`: the colour recipe of docs/training.md runs as one command on a folder
of train / val / test colour classes of 5 images each (the emoji set's shape), and tests 5-way 1-shot and 2-shot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fewshot.model.checkpoint import load_checkpoint
from fewshot.training.recipes import RECIPES
from tests.support.synthetic import write_image_folder


def test_the_colour_recipe_trains_a_32px_conv4_protonet_and_tests_one_and_two_shots(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "colour", classes=40, per_class=5, size=48, split_folders=True)
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "fewshot.recipe", "protonet-colour", "--output", str(output), "--data-root", str(root),
         "--stage-episodes", "train=4", "--val-episodes", "4", "--test-episodes", "6", "--threads", "1",
         "--no-progress"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split()[:3] for line in result.stdout.splitlines() if re.match(r"\s*5\s+[12]\s+6\s", line)]
    assert rows == [["5", "1", "6"], ["5", "2", "6"]], result.stdout
    state = load_checkpoint(output / "train" / "last.pt")
    assert (state["spec"]["backbone"], state["spec"]["learner"], state["spec"]["image_size"]) == ("conv4", "protonet", 32)
    assert state["spec"]["in_channels"] == 3 and state["episode"] == 4
    config = state["config"]
    assert (config["augment"], config["precision"], config["train_ways"], config["queries"], config["eval_queries"]) \
        == ("crop-flip-jitter", "bf16", 20, 4, 3)
    # The recipe as registered: 8,000 episodes under one cosine schedule (the override above scales it).
    (_, stage), = RECIPES.get_or_raise("protonet-colour").stages
    assert (stage.episodes, stage.schedule) == (8000, "cosine")
