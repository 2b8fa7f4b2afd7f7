"""Training augmentation: the affine maps stay in their bounds, are per image and seeded, and an augmented
run on real Omniglot is reproducible and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.training.augment import AffineRange, affine_matrices, augment_episode, augment_generator, random_affine
from fewshot.model.checkpoint import load_checkpoint
from fewshot.data.datasets import load_splits

from tests.training.test_loop import assert_identical, run_args, run_main

IDENTITY = AffineRange(degrees=0.0, shear_degrees=0.0, scale=(1.0, 1.0), translate=0.0)


@pytest.fixture(scope="module")
def characters(omniglot_root: Path) -> torch.Tensor:
    split = load_splits("omniglot", "vinyals", str(omniglot_root), 28).train
    return split.to_float(split.gather(np.arange(0, 20 * 64, 20)))  # 64 different characters


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """[n, 2] ink-weighted mean (row, column) of images [n, 1, H, W]."""
    rows = torch.arange(images.shape[2], dtype=images.dtype).view(1, 1, -1, 1)
    cols = torch.arange(images.shape[3], dtype=images.dtype).view(1, 1, 1, -1)
    mass = images.sum(dim=(1, 2, 3))
    return torch.stack([(images * rows).sum(dim=(1, 2, 3)) / mass, (images * cols).sum(dim=(1, 2, 3)) / mass], dim=1)


def test_identity_bounds_leave_images_unchanged(characters: torch.Tensor) -> None:
    out = random_affine(characters, torch.Generator().manual_seed(0), IDENTITY)
    assert torch.allclose(out, characters, atol=1e-5)


def test_same_generator_seed_same_images_and_each_image_its_own_map(characters: torch.Tensor) -> None:
    a = random_affine(characters, torch.Generator().manual_seed(7))
    b = random_affine(characters, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.allclose(a, random_affine(characters, torch.Generator().manual_seed(8)))
    copies = random_affine(characters[:1].expand(8, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0))
    assert all(not torch.allclose(copies[0], copies[i]) for i in range(1, 8))


def test_translation_moves_ink_within_the_bound(characters: torch.Tensor) -> None:
    bounds = AffineRange(degrees=0.0, shear_degrees=0.0, scale=(1.0, 1.0), translate=0.1)
    theta = affine_matrices(len(characters), torch.Generator().manual_seed(1), bounds)
    assert torch.allclose(theta[:, :, :2], torch.eye(2).expand(len(characters), 2, 2))
    moved = random_affine(characters, torch.Generator().manual_seed(1), bounds)
    shift = centre_of_mass(moved) - centre_of_mass(characters)
    # Shifts are uniform in +-10% of 28 pixels (2.8 px); ink pushed past the border only pulls the centre back.
    assert shift.abs().max() <= 2.8 + 0.3
    assert shift.abs().mean() > 0.5
    # theta's shift is the negated output shift, in the [-1, 1] frame: (x, y) pixels = -theta * 28 / 2
    expected = -theta[:, :, 2].flip(1) * 28 / 2
    central = (characters.sum(dim=(1, 2, 3)) > 0) & (shift.abs().max(dim=1).values < 2.0)
    assert torch.allclose(shift[central], expected[central], atol=0.35)


def test_rotation_and_scale_stay_in_bounds() -> None:
    bounds = AffineRange(degrees=10.0, shear_degrees=0.0, scale=(0.9, 1.1), translate=0.0)
    theta = affine_matrices(1000, torch.Generator().manual_seed(0), bounds).double()
    forward = torch.linalg.inv(theta[:, :, :2])
    scale = torch.linalg.det(forward).sqrt()
    angle = torch.rad2deg(torch.atan2(forward[:, 1, 0], forward[:, 0, 0]))
    assert 0.9 - 1e-6 <= scale.min() and scale.max() <= 1.1 + 1e-6
    assert angle.abs().max() <= 10.0 + 1e-6 and angle.abs().max() > 9.0
    assert torch.allclose(theta[:, :, 2], torch.zeros(1000, 2, dtype=torch.float64), atol=1e-7)


def test_augment_episode_none_is_a_no_op_and_unknown_names_are_refused(characters: torch.Tensor) -> None:
    support, query = characters[:5], characters[5:20]
    assert augment_episode("none", support, query, augment_generator(0, 0)) == (support, query)
    s, q = augment_episode("affine", support, query, augment_generator(0, 0))
    assert s.shape == support.shape and q.shape == query.shape and not torch.allclose(q, query)
    with pytest.raises(ValueError, match="unknown augmentation 'elastic'; valid: none, affine"):
        augment_episode("elastic", support, query, augment_generator(0, 0))
    with pytest.raises(ValueError, match="float images"):
        random_affine(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), augment_generator(0, 0))


def test_augmented_run_is_reproducible_and_resumes_exactly(data_root: Path, tmp_path: Path) -> None:
    augmented = ("--augment", "affine")
    code, _, stderr = run_main(run_args(tmp_path / "full", data_root, episodes=8, extra=augmented))
    assert code == 0, stderr
    code, _, stderr = run_main(run_args(tmp_path / "split", data_root, episodes=4, extra=augmented))
    assert code == 0, stderr
    code, _, stderr = run_main(run_args(tmp_path / "split", data_root, episodes=8, extra=(*augmented, "--resume")))
    assert code == 0, stderr
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["config"]["augment"] == "affine"
    for key in ("model", "optimizer", "scheduler"):
        assert_identical(split[key], full[key], key)
    # and the augmentation changes training: the same run without it ends elsewhere
    code, _, stderr = run_main(run_args(tmp_path / "plain", data_root, episodes=8))
    assert code == 0, stderr
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")
    assert not torch.equal(plain["model"]["backbone.encoder.0.0.weight"], full["model"]["backbone.encoder.0.0.weight"])
