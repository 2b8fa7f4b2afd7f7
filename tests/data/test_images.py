"""The one image-reading rule (`fewshot.data.images`): transparency is composited on white (issue 25, item 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.data.folder import from_folder
from fewshot.data.images import TRANSPARENT_BACKGROUND, has_transparency, load_resized, to_mode


def half_transparent(size: int = 8, red: int = 200) -> Image.Image:
    """Red everywhere, the top half fully transparent: the red under it must never be seen."""
    pixels = np.zeros((size, size, 4), dtype=np.uint8)
    pixels[..., 0] = red
    pixels[size // 2:, :, 3] = 255
    return Image.fromarray(pixels, "RGBA")


def test_transparent_pixels_are_white_in_rgb_and_grayscale() -> None:
    image = half_transparent()
    rgb = load_resized(image, 8, "RGB")
    assert (rgb[:4] == TRANSPARENT_BACKGROUND).all() and (rgb[4:] == (200, 0, 0)).all()
    gray = load_resized(image, 8, "L")
    assert (gray[:4] == 255).all() and (gray[4:] == np.array(Image.new("RGB", (1, 1), (200, 0, 0)).convert("L"))).all()


@pytest.mark.parametrize("mode", ["LA", "PA", "P"])
def test_other_transparent_modes_are_composited_alike(mode: str) -> None:
    if mode == "P":
        image = Image.new("P", (4, 4), 1)
        image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        image.info["transparency"] = 1
    else:
        image = half_transparent(4).convert(mode)
    assert has_transparency(image)
    assert (np.array(to_mode(image, "RGB"))[:2] == TRANSPARENT_BACKGROUND).all()


def test_opaque_images_read_as_before() -> None:
    opaque = half_transparent().convert("RGB")
    assert not has_transparency(opaque)
    assert np.array_equal(load_resized(opaque, 8, "RGB"), np.array(opaque))
    alpha_opaque = opaque.convert("RGBA")  # an alpha channel that hides nothing changes nothing
    assert np.array_equal(load_resized(alpha_opaque, 8, "RGB"), np.array(opaque))


def test_a_folder_of_rgba_pngs_stores_the_white_composite(tmp_path: Path) -> None:
    for c in range(6):
        (tmp_path / f"class{c}").mkdir()
        for i in range(3):
            half_transparent(red=100 + 10 * c + i).save(tmp_path / f"class{c}" / f"{i}.png")  # distinct images
    splits = from_folder(tmp_path, image_size=8, fractions=(0.34, 0.33, 0.33), progress=False)
    stored = splits.train.gather(np.arange(len(splits.train)))  # [N, 3, 8, 8]
    assert (stored[:, :, :4] == 255).all() and (stored[:, 1:, 4:] == 0).all() and (stored[:, 0, 4:] < 200).all()
