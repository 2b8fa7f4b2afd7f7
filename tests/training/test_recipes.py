"""`python -m fewshot.recipe`: the Meta-Baseline recipes (CosFace pretraining, then protonet fine-tuning)
run end to end, as one command, on a generated miniature miniImageNet (ResNet-12, RGB JPEGs in the
real file format)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.model.checkpoint import load_checkpoint
from fewshot.training.recipes import RECIPES, Overrides, stage_configs
from tests.support.synthetic import write_miniimagenet


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_miniimagenet(tmp_path_factory.mktemp("mini"), classes_per_split=(8, 5, 5), per_class=20, size=84)


def recipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot.recipe", *args], capture_output=True, text=True, timeout=600)


def test_the_miniimagenet_recipe_runs_end_to_end_as_one_command(mini_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "mini"
    args = ["meta-baseline-miniimagenet", "--output", str(output), "--data-root", str(mini_root), "--image-size", "32",
            "--batch-classes", "8", "--stage-episodes", "pretrain=4", "--stage-episodes", "finetune=4",
            "--val-episodes", "4", "--test-episodes", "6", "--device", "cpu", "--threads", "1", "--no-progress"]
    result = recipe(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    # The final evaluation: the recipe's two settings, 6 episodes each, on the novel classes.
    rows = [line.split()[:3] for line in result.stdout.splitlines() if re.match(r"\s*5\s+[15]\s+6\s", line)]
    assert rows == [["5", "1", "6"], ["5", "5", "6"]], result.stdout
    pretrain, finetune = load_checkpoint(output / "pretrain" / "last.pt"), load_checkpoint(output / "finetune" / "last.pt")
    assert pretrain["spec"]["backbone"] == finetune["spec"]["backbone"] == "resnet12"
    assert (pretrain["spec"]["learner"], finetune["spec"]["learner"]) == ("cosface", "protonet")
    assert pretrain["config"]["sampling"] == "balanced" and pretrain["config"]["augment"] == "crop-flip-jitter"
    assert "proxies" in "".join(pretrain["model"]) and "proxies" not in "".join(finetune["model"])
    # The fine-tuning stage started from the pretraining stage's backbone (recorded, with its digest).
    assert finetune["config"]["init"] == str((output / "pretrain" / "last.pt").resolve())
    assert finetune["config"]["init_sha256"]
    assert (pretrain["episode"], finetune["episode"]) == (4, 4)
    # Run again: both stages are finished, nothing is retrained, the same evaluation comes out.
    mtime = (output / "finetune" / "last.pt").stat().st_mtime_ns
    again = recipe(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (output / "finetune" / "last.pt").stat().st_mtime_ns == mtime
    assert again.stdout == result.stdout


def test_stage_overrides_scale_the_schedule_and_chain_the_stages(tmp_path: Path) -> None:
    configs = stage_configs(RECIPES["meta-baseline-miniimagenet"], tmp_path,
                            Overrides(values={"image_size": 32}, stage_episodes={"pretrain": 200}))
    (first_name, first), (second_name, second) = configs
    assert (first_name, second_name) == ("pretrain", "finetune")
    assert first.episodes == 200 and first.lr_step == 50 and first.val_every == 200  # 20000 / 5000 kept as a ratio
    assert second.episodes == 4000 and first.image_size == second.image_size == 32
    assert first.init is None and second.init == str(tmp_path / "pretrain" / "last.pt")
    with pytest.raises(ValueError, match="no stage named warmup"):
        stage_configs(RECIPES["meta-baseline-miniimagenet"], tmp_path, Overrides(stage_episodes={"warmup": 3}))


def test_a_bad_stage_episodes_value_is_a_message(tmp_path: Path) -> None:
    result = recipe("meta-baseline-omniglot", "--output", str(tmp_path / "x"), "--stage-episodes", "pretrain")
    assert result.returncode == 2 and "expected STAGE=N" in result.stderr
