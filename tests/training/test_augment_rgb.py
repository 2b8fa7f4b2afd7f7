"""The crop-flip-jitter augmentation: per image, seeded only by the passed generator, leaves torch's global
RNG alone, keeps shape and dtype, and each part (crop, flip, jitter) does what its parameters say.
Images are synthetic (gradients and drawn shapes), so these tests need no data."""

from __future__ import annotations

import pytest
import torch

from fewshot.training.augment import (
    AUGMENTATIONS,
    CropFlipJitterRange,
    augment_episode,
    augment_generator,
    random_affine,
    random_crop_flip_jitter,
)

NO_JITTER = dict(brightness=0.0, contrast=0.0, saturation=0.0)
FLIP_ONLY = CropFlipJitterRange(crop_scale=(1.0, 1.0), **NO_JITTER)


def synthetic(count: int, size: int = 32, channels: int = 3, dtype: torch.dtype = torch.uint8,
              top: float = 1.0) -> torch.Tensor:
    """[count, channels, size, size] images in [0, top]: a diagonal gradient per channel, a bright rectangle
    and a dark disc placed off-centre (so no image is its own mirror), different in each image."""
    rows = torch.arange(size, dtype=torch.float64).view(-1, 1) / (size - 1)
    cols = torch.arange(size, dtype=torch.float64).view(1, -1) / (size - 1)
    images = torch.empty(count, channels, size, size, dtype=torch.float64)
    for i in range(count):
        for c in range(channels):
            images[i, c] = 0.2 + 0.5 * (rows * (c + 1) / channels + cols * (i % 5 + 1) / 5) / 2
        shift = (i * 3) % (size // 4)
        images[i, :, 2 + shift: size // 3 + shift, 1: size // 4] = 0.95  # rectangle near the left edge
        disc = (rows - 0.6) ** 2 + (cols - 0.7 - 0.02 * (i % 4)) ** 2 < 0.02
        images[i, :, disc] = 0.05
    images = images * top
    if dtype == torch.uint8:
        return (images * 255).round().to(torch.uint8)
    return images.to(dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_same_generator_seed_same_output_other_seed_other_output(dtype: torch.dtype) -> None:
    images = synthetic(12, dtype=dtype)
    a = random_crop_flip_jitter(images, torch.Generator().manual_seed(3))
    b = random_crop_flip_jitter(images, torch.Generator().manual_seed(3))
    c = random_crop_flip_jitter(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, images)


def test_global_rng_is_neither_used_nor_changed() -> None:
    images = synthetic(8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    expected_next = torch.rand(5)
    torch.set_rng_state(state)
    first = random_crop_flip_jitter(images, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected_next)
    # and the output does not depend on the global state the caller happened to have
    torch.manual_seed(999)
    assert torch.equal(random_crop_flip_jitter(images, torch.Generator().manual_seed(0)), first)


def test_augment_generator_seeds_reproduce_the_episode() -> None:
    images = synthetic(6)
    a = random_crop_flip_jitter(images, augment_generator(5, 17))
    assert torch.equal(a, random_crop_flip_jitter(images, augment_generator(5, 17)))
    assert not torch.equal(a, random_crop_flip_jitter(images, augment_generator(5, 18)))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_each_image_gets_its_own_parameters(dtype: torch.dtype) -> None:
    copies = synthetic(1, dtype=dtype).expand(16, -1, -1, -1).contiguous()
    out = random_crop_flip_jitter(copies, torch.Generator().manual_seed(0))
    distinct = {out[i].numpy().tobytes() for i in range(len(out))}
    assert len(distinct) >= 15  # crop, flip and jitter draws all continuous or many-valued: ties are rare
    # flips alone are per image too: both orientations occur among 32 copies (all alike: p = 2**-31)
    flips = random_crop_flip_jitter(synthetic(1).expand(32, -1, -1, -1), torch.Generator().manual_seed(1), FLIP_ONLY)
    mirrored = torch.tensor([torch.equal(o, flips[0].flip(-1)) for o in flips])
    assert 0 < mirrored.sum() < 32


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_and_dtype_are_preserved(dtype: torch.dtype, channels: int) -> None:
    images = synthetic(5, size=28, channels=channels, dtype=dtype)[:, :, :, :24]  # not square, not contiguous
    out = random_crop_flip_jitter(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == dtype
    if dtype.is_floating_point:
        assert out.min() >= 0 and out.max() <= 1
    assert random_crop_flip_jitter(images[:0], torch.Generator().manual_seed(0)).shape == (0, channels, 28, 24)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_only_gives_the_image_or_its_mirror_exactly(dtype: torch.dtype) -> None:
    images = synthetic(24, dtype=dtype)
    out = random_crop_flip_jitter(images, torch.Generator().manual_seed(2), FLIP_ONLY)
    same = torch.tensor([torch.equal(o, x) for o, x in zip(out, images)])
    mirror = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, images)])
    assert bool((same ^ mirror).all())  # exactly one of the two (no image is its own mirror)
    assert 0 < int(mirror.sum()) < len(images)


def test_crop_keeps_the_requested_fraction_of_the_image() -> None:
    # a horizontal ramp 0..1: a square crop of half the area spans sqrt(1/2) of the ramp once resized back
    size = 64
    ramp = (torch.arange(size, dtype=torch.float32) / (size - 1)).expand(8, 3, size, size).contiguous()
    bounds = CropFlipJitterRange(crop_scale=(0.5, 0.5), crop_ratio=(1.0, 1.0), flip_p=0.0, **NO_JITTER)
    out = random_crop_flip_jitter(ramp, torch.Generator().manual_seed(0), bounds)
    span = out[:, 0, size // 2, -1] - out[:, 0, size // 2, 0]
    width = round(size * 0.5 ** 0.5)  # 45 columns of the 64 are kept
    assert torch.allclose(span, torch.full_like(span, (width - 1) / (size - 1)), atol=0.03)
    assert (out[:, 0, size // 2, 0] > 0.01).any()  # the crops are not all at the left edge
    assert torch.all(out[:, :, 1:, :] == out[:, :, :1, :])  # rows stay identical: no vertical distortion


def test_brightness_only_scales_each_image_by_one_factor_in_bounds() -> None:
    images = synthetic(40, dtype=torch.float32, top=0.7)  # 0.7 * 1.4 < 1: no clipping
    bounds = CropFlipJitterRange(crop_scale=(1.0, 1.0), flip_p=0.0, brightness=0.4, contrast=0.0, saturation=0.0)
    out = random_crop_flip_jitter(images, torch.Generator().manual_seed(0), bounds)
    factor = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert torch.allclose(out, images * factor.view(-1, 1, 1, 1), atol=1e-5)
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5
    assert factor.max() - factor.min() > 0.4  # spread over the range, per image
    # on uint8 the mean moves by the same bounded factor (up to rounding) and the image stays where it was
    images8 = synthetic(40, top=0.7)
    out8 = random_crop_flip_jitter(images8, torch.Generator().manual_seed(0), bounds).float()
    ratio = out8.mean(dim=(1, 2, 3)) / images8.float().mean(dim=(1, 2, 3))
    assert ratio.min() >= 0.6 - 0.01 and ratio.max() <= 1.4 + 0.01
    assert torch.allclose(ratio, factor, atol=0.01)  # same generator seed, same draws as the float run


def test_saturation_applies_to_colour_images_and_is_skipped_for_grey_ones() -> None:
    bounds = CropFlipJitterRange(crop_scale=(1.0, 1.0), flip_p=0.0, brightness=0.0, contrast=0.0, saturation=0.4)
    grey = synthetic(6, channels=1)
    assert torch.equal(random_crop_flip_jitter(grey, torch.Generator().manual_seed(0), bounds), grey)
    colour = synthetic(6, channels=3)
    out = random_crop_flip_jitter(colour, torch.Generator().manual_seed(0), bounds)
    assert not torch.equal(out, colour)
    # saturation blends with the grey image: the luminance stays (within uint8 rounding)
    weights = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((out.float() * weights).sum(1), (colour.float() * weights).sum(1), atol=1.5)
    # the defaults work on grey images too (brightness and contrast only)
    assert random_crop_flip_jitter(grey, torch.Generator().manual_seed(0)).shape == grey.shape


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_episode_dispatches_and_splits_support_from_query(dtype: torch.dtype) -> None:
    assert "crop-flip-jitter" in AUGMENTATIONS
    images = synthetic(20, dtype=dtype)
    support, query = images[:5], images[5:]
    s, q = augment_episode("crop-flip-jitter", support, query, augment_generator(0, 3))
    assert s.shape == support.shape and q.shape == query.shape and s.dtype == q.dtype == dtype
    both = random_crop_flip_jitter(images, augment_generator(0, 3))
    assert torch.equal(s, both[:5]) and torch.equal(q, both[5:])
    assert not torch.equal(q, query)


def test_existing_augmentations_are_unchanged_and_unknown_names_refused() -> None:
    assert tuple(AUGMENTATIONS)[:2] == ("none", "affine")
    images = synthetic(10, dtype=torch.float32)
    support, query = images[:4], images[4:]
    assert augment_episode("none", support, query, augment_generator(0, 0)) == (support, query)
    s, q = augment_episode("affine", support, query, augment_generator(0, 0))
    expected = random_affine(images, augment_generator(0, 0))
    assert torch.equal(s, expected[:4]) and torch.equal(q, expected[4:])
    with pytest.raises(ValueError, match="unknown augmentation 'cutmix'; valid: none, affine, crop-flip-jitter"):
        augment_episode("cutmix", support, query, augment_generator(0, 0))


@pytest.mark.parametrize(("images", "message"), [
    (torch.zeros(3, 32, 32, dtype=torch.uint8), r"expects images \[n, C, H, W\], got shape \(3, 32, 32\)"),
    (torch.zeros(2, 4, 32, 32, dtype=torch.uint8), r"1 or 3 channels .*got shape \(2, 4, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.int32), r"uint8 or float images, got torch.int32 of shape \(2, 3, 32, 32\)"),
])
def test_bad_input_is_refused_naming_the_shape(images: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        random_crop_flip_jitter(images, torch.Generator().manual_seed(0))
