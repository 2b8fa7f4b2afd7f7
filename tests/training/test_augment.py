"""Training augmentation: the affine maps stay in their bounds, are per image and seeded, and an augmented
run on real Omniglot is reproducible and resumes exactly; the batched crop-flip-jitter draws and resamples as torchvision
v2 does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from fewshot.training.augment import (
    AffineRange,
    CropFlipJitterRange,
    affine_matrices,
    augment_episode,
    augment_generator,
    colour_jitter,
    crop_boxes,
    random_affine,
    random_crop_flip_jitter,
    resized_crops,
)
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


# crop-flip-jitter, batched: the same parameter distributions and resampling as torchvision v2's transforms.

def test_resized_crops_match_v2_resized_crop_and_flip_per_image() -> None:
    images = torch.rand(24, 3, 40, 32, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    boxes = crop_boxes(len(images), 40, 32, generator)
    flips = torch.rand(len(images), generator=generator) < 0.5
    out = resized_crops(images, boxes, flips)
    for image, box, flip, got in zip(images, boxes.tolist(), flips.tolist(), out):
        expected = v2.functional.resized_crop(image, *box, [40, 32], antialias=True)
        expected = v2.functional.horizontal_flip(expected) if flip else expected
        assert torch.allclose(got, expected, atol=1e-5)
    assert 0 < int(flips.sum()) < len(flips)


def test_crop_boxes_follow_v2_random_resized_crop_distribution() -> None:
    count, height, width = 4000, 64, 48
    ours = crop_boxes(count, height, width, torch.Generator().manual_seed(0)).double()
    transform = v2.RandomResizedCrop((height, width), scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
    torch.manual_seed(0)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in
                           (transform.make_params([torch.zeros(3, height, width)]) for _ in range(count))]).double()
    assert (ours[:, 0] >= 0).all() and (ours[:, 1] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    # means and spreads agree within a few standard errors (of 4000 draws)
    for column in range(4):
        spread = theirs[:, column].std()
        assert abs(ours[:, column].mean() - theirs[:, column].mean()) < 4 * spread / count ** 0.5
        assert abs(ours[:, column].std() - spread) < 0.1 * spread
    # no try fits (the area of the whole image, but too wide an aspect ratio): v2's centred fallback
    wide = CropFlipJitterRange(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
    fallback = crop_boxes(5, 32, 32, torch.Generator().manual_seed(0), wide)
    assert fallback.tolist() == [[8, 0, 16, 32]] * 5


def test_contrast_jitter_matches_v2_with_each_image_its_factor() -> None:
    images = torch.rand(16, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    params = CropFlipJitterRange(brightness=0.0, contrast=0.4, saturation=0.0)
    out = colour_jitter(images, torch.Generator().manual_seed(5), params)
    factors = 0.6 + torch.rand(16, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)[:, 0] * 0.8
    for image, factor, got in zip(images, factors.tolist(), out):
        assert torch.allclose(got, v2.functional.adjust_contrast(image, factor), atol=1e-5)
    assert factors.max() - factors.min() > 0.3


def test_crop_flip_jitter_is_one_batched_pass_seeded_by_the_generator_alone() -> None:
    images = torch.rand(30, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    first = random_crop_flip_jitter(images, augment_generator(3, 9))
    torch.manual_seed(2)
    assert torch.equal(random_crop_flip_jitter(images, augment_generator(3, 9)), first)
    assert first.min() >= 0 and first.max() <= 1 and first.shape == images.shape


def test_crop_flip_jitter_run_is_reproducible_and_resumes_exactly(data_root: Path, tmp_path: Path) -> None:
    augmented = ("--augment", "crop-flip-jitter")
    code, _, stderr = run_main(run_args(tmp_path / "full", data_root, episodes=6, extra=augmented))
    assert code == 0, stderr
    code, _, stderr = run_main(run_args(tmp_path / "split", data_root, episodes=3, extra=augmented))
    assert code == 0, stderr
    code, _, stderr = run_main(run_args(tmp_path / "split", data_root, episodes=6, extra=(*augmented, "--resume")))
    assert code == 0, stderr
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["config"]["augment"] == "crop-flip-jitter"
    for key in ("model", "optimizer", "scheduler"):
        assert_identical(split[key], full[key], key)
