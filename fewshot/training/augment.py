"""Training-time augmentation of episode images.

`affine`: every image gets its own small random rotation, shear, scale and shift (the distortions
Koch et al. used for Omniglot Siamese networks), resampled bilinearly with zero fill, which is the
background of the inverted Omniglot images. torchvision's v2 `RandomAffine` draws one transform per
call, so a per-image transform would cost a Python loop over the episode; here all images of an
episode are resampled in one batched `grid_sample`.

`crop-flip-jitter`: the usual natural-image (miniImageNet) recipe, torchvision v2's RandomResizedCrop,
RandomHorizontalFlip and ColorJitter, on uint8 or float images with 1 or 3 channels. Crops of different
sizes do not batch, so the v2 transforms run once per image (a Python loop: about 40 ms for an episode of
80 RGB 84x84 images on one idle CPU core; the kernels, not the loop, take most of it).

Parameters are drawn from a generator that the training loop seeds from (seed, episode), so an
augmented run resumes exactly like a plain one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from fewshot.registry import Registry
from fewshot.training.rngs import augment_generator

#: An augmentation: (support images, query images, generator) -> the augmented (support, query).
EpisodeAugmentation = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

#: Training-image augmentations by name (`--augment`); a new one registers with `@AUGMENTATIONS.register("name")`.
AUGMENTATIONS: Registry[EpisodeAugmentation] = Registry("augmentation")


@dataclass(frozen=True)
class AffineRange:
    """Bounds of the random affine maps: each parameter is uniform in [-bound, bound] (scale in [low, high])."""

    degrees: float = 10.0
    shear_degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.07  # fraction of the image side


def affine_matrices(count: int, generator: torch.Generator, bounds: AffineRange = AffineRange()) -> torch.Tensor:
    """`count` random 2x3 maps [count, 2, 3] from output to input coordinates, in `affine_grid`'s
    normalised [-1, 1] frame."""
    u = torch.rand(count, 5, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1]
    angle = torch.deg2rad(u[:, 0] * bounds.degrees)
    shear = torch.tan(torch.deg2rad(u[:, 1] * bounds.shear_degrees))
    low, high = bounds.scale
    scale = low + (u[:, 2] + 1) / 2 * (high - low)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map: rotate . shear . scale; the grid needs its inverse (where each output pixel comes from)
    forward = torch.zeros(count, 2, 2, dtype=torch.float64)
    forward[:, 0, 0], forward[:, 0, 1] = cos * scale, (cos * shear - sin) * scale
    forward[:, 1, 0], forward[:, 1, 1] = sin * scale, (sin * shear + cos) * scale
    inverse = torch.linalg.inv(forward)
    shift = u[:, 3:5] * bounds.translate * 2  # the normalised frame spans 2 units per side
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(2))], dim=2)
    return theta.float()


def random_affine(images: torch.Tensor, generator: torch.Generator, bounds: AffineRange = AffineRange()) -> torch.Tensor:
    """Float images [n, C, H, W], each under its own random affine map (bilinear, zero fill)."""
    if not images.is_floating_point() or images.dim() != 4:
        raise ValueError(f"random_affine expects float images [n, C, H, W], got {images.dtype} {tuple(images.shape)}")
    theta = affine_matrices(len(images), generator, bounds).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class CropFlipJitterRange:
    """Parameters of `crop-flip-jitter`, as torchvision v2 takes them. The crop is resized back to the
    input size; a jitter strength of 0 turns that jitter off."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # fraction of the image area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio (width / height) of the crop
    flip_p: float = 0.5
    brightness: float = 0.4  # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4  # skipped for 1-channel images, which have no saturation


def _crop_flip_jitter_transforms(height: int, width: int, channels: int,
                                 params: CropFlipJitterRange) -> tuple[v2.Transform, v2.Transform | None]:
    """The per-image v2 transforms: crop and flip, then colour jitter (None when every strength is 0)."""
    geometric = v2.Compose([
        v2.RandomResizedCrop((height, width), scale=params.crop_scale, ratio=params.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(params.flip_p),
    ])
    # Saturation is a blend with the grey image, meaningless for grey input: leave it out explicitly rather
    # than rely on torchvision silently skipping it (which would still spend a draw on its factor).
    saturation = params.saturation if channels == 3 else 0.0
    if not (params.brightness or params.contrast or saturation):
        return geometric, None
    # A strength of 0 is a factor range of [1, 1], which ColorJitter drops (no draw, no kernel).
    return geometric, v2.ColorJitter(brightness=params.brightness, contrast=params.contrast, saturation=saturation)


def random_crop_flip_jitter(images: torch.Tensor, generator: torch.Generator,
                            params: CropFlipJitterRange = CropFlipJitterRange()) -> torch.Tensor:
    """Images [n, C, H, W] (C 1 or 3; uint8, or float in [0, 1]), each with its own random resized crop,
    horizontal flip and colour jitter; returned in the input's shape and dtype.

    The result is a pure function of `generator`'s state (which advances by one draw); torch's global
    RNG, which the v2 transforms draw from, is left as the caller had it."""
    if images.dim() != 4:
        raise ValueError(f"random_crop_flip_jitter expects images [n, C, H, W], got shape {tuple(images.shape)}")
    count, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ValueError(f"random_crop_flip_jitter expects 1 or 3 channels ([n, 1, H, W] or [n, 3, H, W]), "
                         f"got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"random_crop_flip_jitter expects uint8 or float images, got {images.dtype} "
                         f"of shape {tuple(images.shape)}")
    geometric, colour = _crop_flip_jitter_transforms(height, width, channels, params)
    # Drawn before the empty-batch exit, so the generator advances the same way whatever the batch.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    if count == 0:
        return images.clone()
    # Crops run in the input dtype (v2's uint8 antialiased resize is native and faster than float's); other
    # float types go through float32, which every v2 kernel supports. Colour jitter runs in float32: v2's
    # uint8 colour kernels convert to float and back at every step, slower and rounding three times.
    work = images if images.dtype in (torch.uint8, torch.float32) else images.float()
    # v2 draws one set of parameters per call from the global RNG: one call per image makes the parameters
    # per image, and a forked, reseeded global RNG makes them a function of `generator` alone.
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for image in work:
            image = v2.functional.to_dtype(geometric(image), torch.float32, scale=True)
            out.append(image if colour is None else colour(image))
    return v2.functional.to_dtype(torch.stack(out), images.dtype, scale=True)


def _per_image(transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor]) -> EpisodeAugmentation:
    """An episode augmentation that runs `transform` once over the support and query images together."""

    def augment(support_x: torch.Tensor, query_x: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        both = transform(torch.cat([support_x, query_x]), generator)
        return both[: len(support_x)], both[len(support_x):]

    augment.__doc__ = transform.__doc__
    return augment


@AUGMENTATIONS.register("none")
def no_augmentation(support_x: torch.Tensor, query_x: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The images as they are."""
    return support_x, query_x


AUGMENTATIONS.register("affine", _per_image(random_affine))
AUGMENTATIONS.register("crop-flip-jitter", _per_image(random_crop_flip_jitter))


def augment_episode(name: str, support_x: torch.Tensor, query_x: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the augmentation registered as `name` to an episode's support and query images."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](support_x, query_x, generator)


__all__ = ["AUGMENTATIONS", "AffineRange", "CropFlipJitterRange", "EpisodeAugmentation", "affine_matrices",
           "augment_episode", "augment_generator", "no_augmentation", "random_affine", "random_crop_flip_jitter"]
