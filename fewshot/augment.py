"""Training-time augmentation of episode images.

`affine`: every image gets its own small random rotation, shear, scale and shift (the distortions
Koch et al. used for Omniglot Siamese networks), resampled bilinearly with zero fill, which is the
background of the inverted Omniglot images. torchvision's v2 `RandomAffine` draws one transform per
call, so a per-image transform would cost a Python loop over the episode; here all images of an
episode are resampled in one batched `grid_sample`.

Parameters are drawn from a generator that the training loop seeds from (seed, episode), so an
augmented run resumes exactly like a plain one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "affine")


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


def augment_episode(name: str, support_x: torch.Tensor, query_x: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply augmentation `name` (one of AUGMENTATIONS) to an episode's support and query images."""
    if name == "none":
        return support_x, query_x
    if name == "affine":
        both = random_affine(torch.cat([support_x, query_x]), generator)
        return both[: len(support_x)], both[len(support_x):]
    raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")


def augment_generator(seed: int, episode: int) -> torch.Generator:
    """The augmentation RNG of episode `episode`, a pure function of (seed, episode) and separate from
    the learner's (so turning augmentation on leaves the miners' draws unchanged)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + episode) * 2 + 1 + (1 << 40))


__all__ = ["AUGMENTATIONS", "AffineRange", "affine_matrices", "augment_episode", "augment_generator", "random_affine"]
