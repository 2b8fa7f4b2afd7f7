"""Reading image files: the one decoding and resizing rule, the image extensions, and what counts as an OS artifact.

What `load_resized` does with images that are not plain 8-bit RGB or grayscale (docs/data.md, "Colour folders"):

- transparency (RGBA, LA, PA, a palette or PNG tRNS transparent colour) is composited on white
  (`TRANSPARENT_BACKGROUND`), so the colour under transparent pixels never reaches the model;
- CMYK (print JPEGs) goes to RGB by PIL's formula, R = (255 - C)(255 - K) / 255 and alike for G and B (an
  embedded colour profile is not applied);
- 16-bit grayscale (PIL modes I;16, I;16B, I;16L and I, as PIL opens 16-bit PNGs and TIFFs) is scaled to 8 bits,
  value / 257 rounded (65535 -> 255); values outside 0..65535 and floating-point images (mode F, whose range is
  not defined) are refused;
- an animated image (GIF, APNG, WebP) or a multi-page TIFF is read at its first frame;
- an image with a side under `MIN_IMAGE_SIDE` pixels is refused (a 1x1 tracking pixel or a placeholder holds
  nothing to learn); an image over PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) is decoded at reduced
  scale where the format allows (JPEG), and one over twice that limit, where PIL refuses to open it, is refused,
  naming its size and the limit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# PIL modes holding one intensity per pixel; every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) counts as colour.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
# Files and folders that operating systems and archivers leave beside data; hidden names (".DS_Store",
# "._x.png") count too.
OS_ARTIFACTS = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


def is_os_artifact(name: str) -> bool:
    """True for OS metadata (".DS_Store", "._x.png", "__MACOSX/", "Thumbs.db"), in any part of a "/"-separated
    name: not data, so skipped rather than rejected."""
    return any(part.startswith(".") or part in OS_ARTIFACTS for part in name.split("/"))


def is_grayscale(mode: str) -> bool:
    """Whether PIL `mode` holds one intensity per pixel (16-bit modes included)."""
    return mode in GRAYSCALE_MODES or mode.startswith("I;16")


def is_image_name(path: Path) -> bool:
    """Whether `path` has one of `IMAGE_EXTENSIONS` (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


#: The colour transparent pixels are composited on, as image viewers show them on a page: white.
TRANSPARENT_BACKGROUND = (255, 255, 255)


def has_transparency(image: Image.Image) -> bool:
    """Whether `image` has an alpha channel or a transparent colour (a palette or a PNG tRNS entry)."""
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode in ("P", "L", "RGB", "1")
                                                                 and "transparency" in image.info)


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` in PIL `mode`; an image with transparency going to a mode without alpha is first composited on
    `TRANSPARENT_BACKGROUND` (white), so the colour hidden under transparent pixels never reaches the model."""
    if has_transparency(image) and "A" not in mode and "a" not in mode:
        canvas = Image.new("RGBA", image.size, (*TRANSPARENT_BACKGROUND, 255))
        canvas.alpha_composite(image.convert("RGBA"))
        image = canvas.convert("RGB")
    return image.convert(mode)


#: The smallest side (pixels) an image may have: below it an image is refused as holding nothing to learn.
MIN_IMAGE_SIDE = 8
#: PIL modes of 16-bit grayscale: read as 0..65535 and scaled to 8 bits. Mode I (32-bit integers) is how PIL
#: opens 16-bit grayscale PNGs and TIFFs in some versions, so it is read as 16-bit too.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """`Image.open(path)` (lazy: the header only), with a ValueError naming the file when it cannot be read and,
    for an image beyond PIL's decompression-bomb limit, its size and the limit. PIL's warning for images between
    `Image.MAX_IMAGE_PIXELS` and the limit is silenced: `load_resized` decodes them at reduced scale."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {path} is too large to decode safely: {error} (PIL's limit is twice "
                         f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}); downscale it first, or raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    with opened:
        yield opened


def _sixteen_bit_to_8(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit grayscale image as 8-bit "L": value / 257, rounded (PIL's own conversion clips at 255)."""
    values = np.asarray(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"image {name} (PIL mode {image.mode}) has values {values.min()}..{values.max()}; a "
                         "grayscale image of integers is read as 16-bit (0..65535): save it as 8- or 16-bit")
    return Image.fromarray(np.rint(values / 257).astype(np.uint8), mode="L")


def readable(image: Image.Image, image_size: int, name: str) -> Image.Image:
    """`image` ready for `to_mode`: its first frame, 16-bit grayscale scaled to 8 bits, a huge JPEG decoded at
    reduced scale (at least twice `image_size`); an image too small or of floating-point values refused with a
    ValueError naming `name` (see the module docstring)."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {name} is {width}x{height} pixels; images need at least {MIN_IMAGE_SIDE} pixels on "
                         "each side (a tracking pixel or a placeholder?): remove it")
    if image.mode == "F":
        raise ValueError(f"image {name} holds floating-point values (PIL mode F), whose range is not defined; save it "
                         "as an 8- or 16-bit image")
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        image.draft(image.mode, (2 * image_size, 2 * image_size))  # JPEG: decoded at 1/2, 1/4 or 1/8 scale
    if image.mode in SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_8(image, name)
    return image


def load_resized(image: Image.Image | str | Path, image_size: int, mode: str) -> np.ndarray:
    """uint8 pixels of `image` (a PIL image or a file path) in PIL `mode` (transparent pixels composited on
    white, `to_mode`; other modes, frames and sizes as the module docstring says), resized to a square with
    torchvision's antialiased bilinear resize (a no-op at the image's own size)."""
    if isinstance(image, (str, Path)):
        with open_image(image) as opened:
            try:
                return _load_resized(opened, image_size, mode, str(image))
            except (OSError, SyntaxError) as error:
                raise ValueError(f"cannot read image {image}: {error}") from error
    return _load_resized(image, image_size, mode, "(a PIL image)")


def _load_resized(image: Image.Image, image_size: int, mode: str, name: str) -> np.ndarray:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    image = readable(image, image_size, name)
    resized = TF.resize(to_mode(image, mode), [image_size, image_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return np.array(resized, dtype=np.uint8)
