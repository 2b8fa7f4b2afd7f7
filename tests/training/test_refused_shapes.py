"""Training shapes that cannot learn are refused before the run directory exists (issue 25): 1-way episodes,
training batches that give the loss no gradient (what each learner declares a batch must hold), backbone
arguments that cannot build a backbone, and a frozen backbone that was never trained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fewshot.training import TrainConfig
from fewshot.training.config import check_settings
from tests.training.test_loop import TINY, run_main


def refused(data_root: Path, output: Path, *extra: str) -> str:
    """fewshot.train's stderr for a command that must be refused (exit 2) without writing `output`."""
    code, _, stderr = run_main([*TINY, "--episodes", "4", "--data-root", str(data_root), "--output", str(output),
                                *extra])
    assert code == 2, stderr
    assert not output.exists(), "the run directory was written before the refusal"
    return stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["--ways", "1"], r"--ways must be at least 2, got 1: a 1-way episode has one class to choose"),
    (["--train-ways", "1"], r"--train-ways 1 gives training batches of 1 class, and the protonet loss needs at "
                            r"least 2 classes in a batch .* use --train-ways 2 or more"),
])
def test_one_way_episodes_are_refused_naming_the_flag(extra: list[str], message: str, data_root: Path,
                                                      tmp_path: Path) -> None:
    assert re.search(message, refused(data_root, tmp_path / "run", *extra))


@pytest.mark.parametrize("learner", ["triplet", "multi-similarity"])
def test_a_pair_loss_on_batches_without_positive_pairs_is_refused(learner: str, data_root: Path,
                                                                  tmp_path: Path) -> None:
    stderr = refused(data_root, tmp_path / "run", "--learner", learner, "--sampling", "balanced",
                     "--batch-classes", "8", "--batch-images", "1")
    assert (f"--batch-images 1 gives training batches with 1 image of each class, and the {learner} loss needs at "
            "least 2 images of a class in a batch (a positive pair)") in stderr
    assert "use --batch-images 2 or more" in stderr


@pytest.mark.parametrize(("learner", "refused_images", "refused_classes"), [
    ("siamese", True, True), ("triplet", True, True), ("multi-similarity", True, True),
    ("lifted-structure", True, True), ("n-pair", True, True), ("circle", True, True),
    ("cosface", False, False), ("proxy-anchor", False, False), ("proxy-nca", False, False),
    ("circle-class", False, False), ("normface", False, False),
])
def test_each_learner_declares_what_a_balanced_batch_must_hold(learner: str, refused_images: bool,
                                                               refused_classes: bool) -> None:
    def check(classes: int, images: int) -> str | None:
        try:
            check_settings(TrainConfig(learner=learner, sampling="balanced", batch_classes=classes, batch_images=images))
        except ValueError as error:
            return str(error)
        return None

    one_image, one_class = check(8, 1), check(1, 2)
    assert (one_image is not None) == refused_images, one_image
    assert (one_class is not None) == refused_classes, one_class
    if refused_images:
        assert one_image.startswith("--batch-images 1 ")
    if refused_classes:
        assert one_class.startswith("--batch-classes 1 ")
    assert check(2, 2) is None  # two images of two classes: every loss has a gradient


@pytest.mark.parametrize(("argument", "message"), [
    ("hidden=0", "Conv4 hidden must be a positive whole number of channels, got 0"),
    ("out_channels=-3", "Conv4 out_channels must be a positive whole number of channels, got -3"),
])
def test_backbone_arguments_are_checked_before_the_run_directory_exists(argument: str, message: str, data_root: Path,
                                                                        tmp_path: Path) -> None:
    assert message in refused(data_root, tmp_path / "run", "--backbone-arg", argument)


def test_a_frozen_backbone_needs_an_init_checkpoint(data_root: Path, tmp_path: Path) -> None:
    stderr = refused(data_root, tmp_path / "run", "--learner", "cosface", "--sampling", "balanced",
                     "--batch-classes", "8", "--batch-images", "2", "--freeze-backbone")
    assert "--freeze-backbone needs --init CHECKPOINT" in stderr
