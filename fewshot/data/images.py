"""Reading image files: the one decoding and resizing rule, the image extensions, and what counts as an OS artifact."""

from __future__ import annotations

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


def load_resized(image: Image.Image | str | Path, image_size: int, mode: str) -> np.ndarray:
    """uint8 pixels of `image` (a PIL image or a file path) in PIL `mode` (transparent pixels composited on
    white, `to_mode`), resized to a square with torchvision's antialiased bilinear resize (a no-op at the image's
    own size)."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                return load_resized(opened, image_size, mode)
        except (OSError, SyntaxError) as error:
            raise ValueError(f"cannot read image {image}: {error}") from error
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    resized = TF.resize(to_mode(image, mode), [image_size, image_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return np.array(resized, dtype=np.uint8)
