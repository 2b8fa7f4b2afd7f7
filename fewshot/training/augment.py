"""Training-time augmentation of episode images.

`affine`: every image gets its own small random rotation, shear, scale and shift (the distortions
Koch et al. used for Omniglot Siamese networks), resampled bilinearly with zero fill, which is the
background of the inverted Omniglot images. torchvision's v2 `RandomAffine` draws one transform per
call, so a per-image transform would cost a Python loop over the episode; here all images of an
episode are resampled in one batched `grid_sample`.

`crop-flip-jitter`: the usual natural-image (miniImageNet) recipe, torchvision v2's RandomResizedCrop,
RandomHorizontalFlip and ColorJitter, on uint8 or float images with 1 or 3 channels, with each image's
parameters drawn from the same distributions as v2 draws them. Crops of different sizes do not batch as
tensors, but their resampling does: a crop resized back to the image size is a separable bilinear map,
one [H, H] and one [W, W] matrix per image, so the whole episode is resampled with two batched matrix
products (one call per episode, no Python loop over images), and the jitter is batched the same way
(`random_crop_flip_jitter`).

Parameters are drawn from a generator that the training loop seeds from (seed, episode), so an
augmented run resumes exactly like a plain one.
"""

from __future__ import annotations

import math
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


#: Luminance weights of v2's `rgb_to_grayscale` (ITU-R 601-2), which contrast and saturation blend towards.
GREY_WEIGHTS = (0.2989, 0.587, 0.114)
#: Tries of v2's RandomResizedCrop at a crop inside the image before it falls back to the central crop.
CROP_TRIES = 10


def crop_boxes(count: int, height: int, width: int, generator: torch.Generator,
               params: CropFlipJitterRange = CropFlipJitterRange()) -> torch.Tensor:
    """`count` random crop boxes [count, 4] (top, left, crop height, crop width; int64), drawn as v2's
    `RandomResizedCrop.make_params` draws one: up to `CROP_TRIES` tries of an area fraction uniform in
    `crop_scale` and a log-uniform aspect ratio in `crop_ratio`, the first that fits the image kept, else the
    central crop of the clamped aspect ratio; then a uniform integer position. Batched: all tries at once."""
    area = height * width
    low, high = params.crop_scale
    log_low, log_high = math.log(params.crop_ratio[0]), math.log(params.crop_ratio[1])
    draws = torch.rand(count, CROP_TRIES, 2, generator=generator, dtype=torch.float64)
    target_area = area * (low + draws[..., 0] * (high - low))
    aspect = torch.exp(log_low + draws[..., 1] * (log_high - log_low))
    # torch.round rounds half to even, as Python's round in v2 does.
    tried_w = torch.round(torch.sqrt(target_area * aspect))
    tried_h = torch.round(torch.sqrt(target_area / aspect))
    fits = (tried_w > 0) & (tried_w <= width) & (tried_h > 0) & (tried_h <= height)
    first = fits.double().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    crop_w = tried_w.gather(1, first).squeeze(1)
    crop_h = tried_h.gather(1, first).squeeze(1)
    # v2's fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < min(params.crop_ratio):
        fallback_w, fallback_h = width, int(round(width / min(params.crop_ratio)))
    elif in_ratio > max(params.crop_ratio):
        fallback_w, fallback_h = int(round(height * max(params.crop_ratio))), height
    else:
        fallback_w, fallback_h = width, height
    none_fit = ~fits.any(dim=1)
    crop_w = torch.where(none_fit, float(fallback_w), crop_w)
    crop_h = torch.where(none_fit, float(fallback_h), crop_h)
    position = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(position[:, 0] * (height - crop_h + 1)).clamp(max=height - crop_h)
    left = torch.floor(position[:, 1] * (width - crop_w + 1)).clamp(max=width - crop_w)
    top = torch.where(none_fit, torch.floor((height - crop_h) / 2), top)
    left = torch.where(none_fit, torch.floor((width - crop_w) / 2), left)
    return torch.stack([top, left, crop_h, crop_w], dim=1).long()


def _bilinear_taps(start: torch.Tensor, length: torch.Tensor, size: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each image's crop [start, start + length) of one axis resized to `size` pixels: the two source
    indices [n, size] each output pixel mixes and the weight of the second. Half-pixel centres, source
    positions clamped to the crop, as `F.interpolate(..., align_corners=False)` and v2's antialiased
    resize (which, enlarging, is the same triangle filter) compute them."""
    scale = length.double() / size  # never above 1: a crop is never larger than the image
    steps = torch.arange(size, dtype=torch.float64)
    source = ((steps.unsqueeze(0) + 0.5) * scale.unsqueeze(1) - 0.5).clamp(min=0.0)
    lower = torch.floor(source)
    weight = source - lower
    lower = lower.long()
    upper = torch.minimum(lower + 1, (length - 1).unsqueeze(1))
    offset = start.unsqueeze(1)
    return (lower + offset).to(device), (upper + offset).to(device), weight


def _interpolation_matrices(lower: torch.Tensor, upper: torch.Tensor, weight: torch.Tensor, size: int,
                            dtype: torch.dtype) -> torch.Tensor:
    """[n, size, size] matrices (a crop resized back to the image size: as many pixels out as in) whose row k
    mixes source pixels lower[:, k] and upper[:, k] with weights 1 - weight and weight (added up where the
    two coincide)."""
    count = len(lower)
    matrices = torch.zeros(count, size, size, dtype=dtype, device=lower.device)
    weight = weight.to(dtype).to(lower.device)
    matrices.scatter_add_(2, lower.unsqueeze(2), (1 - weight).unsqueeze(2))
    matrices.scatter_add_(2, upper.unsqueeze(2), weight.unsqueeze(2))
    return matrices


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image's crop `boxes[i]` (top, left, height, width) resized bilinearly back to the image size and
    mirrored left-right where `flips[i]`, for float images [n, C, H, W], in one batched pass. A crop of the
    whole image returns its pixels exactly (its matrices are then identities or, flipped, a permutation)."""
    count, channels, height, width = images.shape
    rows_a, rows_b, row_weight = _bilinear_taps(boxes[:, 0], boxes[:, 2], height, images.device)
    cols_a, cols_b, col_weight = _bilinear_taps(boxes[:, 1], boxes[:, 3], width, images.device)
    # A flip after the resize samples the same columns in reverse order: folded into the column taps.
    mirrored = flips.to(torch.bool).unsqueeze(1)
    cols_a = torch.where(mirrored.to(cols_a.device), cols_a.flip(1), cols_a)
    cols_b = torch.where(mirrored.to(cols_b.device), cols_b.flip(1), cols_b)
    col_weight = torch.where(mirrored, col_weight.flip(1), col_weight)
    # Bilinear resampling is separable: out = rows @ (image @ columns^T) per image and channel, two batched
    # products with matrices of two non-zeros a row (dense: at these sizes a product beats a gather). The
    # columns go first, as one product per image over all its channels' rows.
    rows = _interpolation_matrices(rows_a, rows_b, row_weight, height, images.dtype)
    columns = _interpolation_matrices(cols_a, cols_b, col_weight, width, images.dtype)
    resized_columns = torch.bmm(images.reshape(count, channels * height, width), columns.transpose(1, 2))
    return rows.unsqueeze(1) @ resized_columns.view(count, channels, height, width)


def colour_jitter(images: torch.Tensor, generator: torch.Generator,
                  params: CropFlipJitterRange = CropFlipJitterRange()) -> torch.Tensor:
    """v2's ColorJitter (brightness, contrast, saturation; no hue) on float images [n, C, H, W] in [0, 1], each
    image with its own factors (uniform in [max(0, 1 - s), 1 + s] for strength s) and its own uniformly
    random order of the adjustments, as v2 draws them per call; batched over the images. Each adjustment is
    v2's blend ``clamp(f * x + (1 - f) * target, 0, 1)`` towards black (brightness), the image's mean
    luminance (contrast) or its luminance image (saturation; left out for 1-channel images)."""
    count, channels = images.shape[:2]
    strengths = {"brightness": params.brightness, "contrast": params.contrast,
                 "saturation": params.saturation if channels == 3 else 0.0}
    kinds = [kind for kind, strength in strengths.items() if strength]
    if not kinds or count == 0:
        return images
    uniform = torch.rand(count, len(kinds), generator=generator, dtype=torch.float64)
    lows = torch.tensor([max(0.0, 1 - strengths[kind]) for kind in kinds], dtype=torch.float64)
    highs = torch.tensor([1 + strengths[kind] for kind in kinds], dtype=torch.float64)
    factors = lows + uniform * (highs - lows)
    # A uniformly random order of the adjustments per image: the ranks of independent uniform draws.
    order = torch.rand(count, len(kinds), generator=generator, dtype=torch.float64).argsort(dim=1)
    code = {kind: kinds.index(kind) if kind in kinds else -1 for kind in strengths}
    shape = (count, 1, 1, 1)
    for slot in range(len(kinds)):
        kind_index = order[:, slot]
        f = factors.gather(1, kind_index.unsqueeze(1)).to(images.dtype).to(images.device).view(shape)
        uses_mean = (kind_index == code["contrast"]).to(images.dtype).to(images.device).view(shape)
        uses_grey = (kind_index == code["saturation"]).to(images.dtype).to(images.device).view(shape)
        grey = images
        if channels == 3:
            red, green, blue = images.unbind(1)
            grey = (red * GREY_WEIGHTS[0] + green * GREY_WEIGHTS[1] + blue * GREY_WEIGHTS[2]).unsqueeze(1)
        # The target: the luminance image (saturation), its mean (contrast) or 0 (brightness).
        target = torch.addcmul(grey.mean(dim=(1, 2, 3), keepdim=True) * uses_mean, grey, uses_grey)
        # v2's blend f * x + (1 - f) * target as one lerp from the target (equal up to float rounding).
        images = torch.lerp(target.expand_as(images), images, f).clamp_(0.0, 1.0)
    return images


def random_crop_flip_jitter(images: torch.Tensor, generator: torch.Generator,
                            params: CropFlipJitterRange = CropFlipJitterRange()) -> torch.Tensor:
    """Images [n, C, H, W] (C 1 or 3; uint8, or float in [0, 1]), each with its own random resized crop,
    horizontal flip and colour jitter; returned in the input's shape and dtype.

    The parameters follow torchvision v2's RandomResizedCrop, RandomHorizontalFlip (flip with probability
    `flip_p`) and ColorJitter draws, one set per image (`crop_boxes`, `colour_jitter`); the resampling is
    bilinear as v2's enlarging resize (`resized_crops`). All of it runs batched over the images, in float
    (uint8 images are converted and converted back as v2's `to_dtype` does). The result is a pure function
    of `generator`'s state; torch's global RNG is neither used nor changed."""
    if images.dim() != 4:
        raise ValueError(f"random_crop_flip_jitter expects images [n, C, H, W], got shape {tuple(images.shape)}")
    count, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ValueError(f"random_crop_flip_jitter expects 1 or 3 channels ([n, 1, H, W] or [n, 3, H, W]), "
                         f"got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"random_crop_flip_jitter expects uint8 or float images, got {images.dtype} "
                         f"of shape {tuple(images.shape)}")
    if count == 0:
        return images.clone()
    work_dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    work = v2.functional.to_dtype(images, work_dtype, scale=True)
    boxes = crop_boxes(count, height, width, generator, params)
    flips = torch.rand(count, generator=generator, dtype=torch.float64) < params.flip_p
    out = colour_jitter(resized_crops(work, boxes, flips), generator, params)
    return v2.functional.to_dtype(out, images.dtype, scale=True)


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
           "augment_episode", "augment_generator", "colour_jitter", "crop_boxes", "no_augmentation", "random_affine",
           "random_crop_flip_jitter", "resized_crops"]
