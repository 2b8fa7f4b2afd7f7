"""Image folders that are not Omniglot-shaped (issue 29): files in every format PIL writes that are not plain 8-bit
RGB or grayscale, each read by a stated conversion or refused naming the file; classes too small for the episode
shape left out by `min_images` and listed; a class in two split folders refused."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from fewshot.data.datasets import load_splits
from fewshot.data.folder import from_folder
from fewshot.data.images import MIN_IMAGE_SIDE, is_grayscale, load_resized
from tests.support.synthetic import write_image_folder

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEWSHOT_CACHE", str(cache))
    return cache


def cmyk_jpeg(path: Path, cmyk: tuple[int, int, int, int] = (0, 255, 255, 0), size: int = 16) -> Path:
    Image.new("CMYK", (size, size), cmyk).save(path, "JPEG", quality=95)
    return path


def sixteen_bit_png(path: Path, size: int = 16) -> Path:
    """A 16-bit grayscale PNG whose columns run 0, 257, 2*257, ... (8-bit value = column number * 16)."""
    values = np.tile((np.arange(size) * 16 * 257).astype(np.uint16), (size, 1))
    Image.fromarray(values).save(path)  # PIL writes mode I;16 as a 16-bit PNG
    return path


def palette_png_with_transparency(path: Path, size: int = 16) -> Path:
    """A palette PNG: index 0 red, made transparent by a tRNS entry, on the left half; index 1 blue on the right."""
    image = Image.new("P", (size, size), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(1, (size // 2, 0, size, size))
    image.save(path, transparency=0)
    return path


def animated_gif(path: Path, size: int = 16) -> Path:
    """Two frames: red, then blue."""
    first, second = Image.new("RGB", (size, size), RED), Image.new("RGB", (size, size), BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    return path


# ---------------------------------------------------------------------------------------------------------------
# each kind of file, read by a stated conversion


def test_cmyk_jpeg_goes_to_rgb_by_pils_formula(tmp_path: Path) -> None:
    path = cmyk_jpeg(tmp_path / "print.jpg")
    with Image.open(path) as image:
        assert image.mode == "CMYK" and not is_grayscale(image.mode)
    pixels = load_resized(path, 16, "RGB").astype(int)
    assert np.abs(pixels - np.array(RED)).max() <= 3  # C=0, M=Y=255, K=0: (255 - C)(255 - K) / 255 = 255 red
    gray_k = load_resized(cmyk_jpeg(tmp_path / "k.jpg", (0, 0, 0, 128)), 16, "RGB").astype(int)
    assert np.abs(gray_k - 127).max() <= 3  # K=128 alone: (255 - 128) in every channel


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped(tmp_path: Path) -> None:
    path = sixteen_bit_png(tmp_path / "depth.png")
    with Image.open(path) as image:
        assert image.mode.startswith("I") and is_grayscale(image.mode)
    pixels = load_resized(path, 16, "L")
    assert pixels[0].tolist() == [16 * column for column in range(16)]  # value / 257; PIL's convert("L") gave 255s
    assert (load_resized(path, 16, "RGB")[..., 0] == pixels).all()


def test_integer_and_float_images_outside_sixteen_bits_are_refused() -> None:
    as_int = Image.fromarray(np.full((16, 16), 1000, dtype=np.int32))  # mode I, 0..65535: read as 16-bit
    assert as_int.mode == "I" and load_resized(as_int, 16, "L").max() == round(1000 / 257)
    with pytest.raises(ValueError, match=r"values 70000..70000; a grayscale image of integers is read as 16-bit"):
        load_resized(Image.fromarray(np.full((16, 16), 70000, dtype=np.int32)), 16, "L")
    with pytest.raises(ValueError, match=r"floating-point values \(PIL mode F\)"):
        load_resized(Image.fromarray(np.zeros((16, 16), dtype=np.float32)), 16, "L")


def test_palette_png_transparency_is_composited_on_white(tmp_path: Path) -> None:
    path = palette_png_with_transparency(tmp_path / "icon.png")
    with Image.open(path) as image:
        assert image.mode == "P" and image.info.get("transparency") == 0
    pixels = load_resized(path, 16, "RGB")
    assert (pixels[:, :8] == 255).all()  # the red under the transparent index is never seen
    assert (pixels[:, 8:] == BLUE).all()
    assert (load_resized(path, 16, "L")[:, :8] == 255).all()


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBA"])
def test_every_alpha_mode_is_composited_on_white(mode: str) -> None:
    image = Image.new("RGBA", (16, 16), (*RED, 0)).convert(mode)  # fully transparent red
    assert (load_resized(image, 16, "RGB") == 255).all() and (load_resized(image, 16, "L") == 255).all()


def test_animated_gif_is_read_at_its_first_frame(tmp_path: Path) -> None:
    path = animated_gif(tmp_path / "blink.gif")
    with Image.open(path) as image:
        assert image.n_frames == 2
    assert (np.abs(load_resized(path, 16, "RGB").astype(int) - RED) <= 2).all()
    with Image.open(path) as image:
        image.seek(1)  # a caller's image left at another frame: still the first frame
        assert (np.abs(load_resized(image, 16, "RGB").astype(int) - RED) <= 2).all()


def test_tiny_images_are_refused_naming_the_file(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), RED).save(tmp_path / "pixel.png")
    with pytest.raises(ValueError, match=rf"image {tmp_path / 'pixel.png'} is 1x1 pixels; images need at least "
                                         rf"{MIN_IMAGE_SIDE} pixels on each side"):
        load_resized(tmp_path / "pixel.png", 16, "RGB")
    Image.new("RGB", (MIN_IMAGE_SIDE, 40), RED).save(tmp_path / "narrow.png")
    assert load_resized(tmp_path / "narrow.png", 16, "RGB").shape == (16, 16, 3)


def test_a_ten_thousand_pixel_square_png_is_decoded_without_pils_bomb_warning(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000), 1).save(path)  # 100M pixels, over PIL's warning limit; a few KB on disk
    assert path.stat().st_size < 100_000 and 10_000 * 10_000 > Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        pixels = load_resized(path, 16, "L")
    assert (pixels == 255).all()


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "photo.jpg"
    gradient = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))
    Image.fromarray(gradient).convert("RGB").save(path, quality=95)
    full = load_resized(path, 32, "RGB").astype(int)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # 512^2 = 262,144: over the limit, under twice it
    drafted: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(image, mode, size):
        result = draft(image, mode, size)
        drafted.append(image.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        reduced = load_resized(path, 32, "RGB").astype(int)
    assert drafted == [(64, 64)]  # decoded at 1/8 scale, at least twice the 32px asked for
    assert np.abs(reduced - full).max() <= 4  # then the same resize


def test_an_image_beyond_twice_pils_limit_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100), 0).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # the file's 10,000 pixels are beyond 2 x 1,000
    with pytest.raises(ValueError, match=rf"image {path} is too large to decode safely: .*MAX_IMAGE_PIXELS = 1,000"):
        load_resized(path, 16, "L")


# ---------------------------------------------------------------------------------------------------------------
# the same files in a folder


def format_zoo(root: Path, per_class: int = 3) -> Path:
    """One class folder per kind of file, `per_class` images each (distinct contents), in split folders."""
    writers = {"cmyk": lambda p, i: cmyk_jpeg(p.with_suffix(".jpg"), (0, 20 * i, 255, 0)),
               "sixteen": lambda p, i: Image.fromarray(np.full((16, 16), 1000 * (i + 1), np.uint16)).save(p),
               "palette": lambda p, i: palette_png_with_transparency(p, 16 + 2 * i),
               "gif": lambda p, i: animated_gif(p.with_suffix(".gif"), 16 + 2 * i)}
    for number, (name, write) in enumerate(writers.items()):
        split = ("train", "train", "val", "test")[number]
        for i in range(per_class):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            write(folder / f"{i}.png", i)
    rng = np.random.default_rng(0)
    for split in ("val", "test"):  # a plain RGB class beside, so that every split has 2 classes
        folder = root / split / f"{split}_rgb"
        folder.mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_a_folder_of_every_format_loads_as_rgb_by_the_same_rule(tmp_path: Path) -> None:
    root = format_zoo(tmp_path / "zoo")
    with pytest.raises(ValueError, match="mixes grayscale and colour images"):  # 16-bit gray beside colour
        from_folder(root, image_size=16, progress=False)
    splits = from_folder(root, image_size=16, channels=3, progress=False)
    for name in ("train", "val", "test"):
        split = splits.get(name)
        for row, item in zip(split.image_index, split.item_ids):
            expected = load_resized(root / str(item), 16, "RGB").transpose(2, 0, 1)
            assert (split.images[row].numpy() == expected).all(), item
    sixteen = splits.train.image_index[splits.train.labels == splits.train.class_names.index("sixteen")]
    assert splits.train.images[sixteen[0]].max().item() == round(1000 / 257)


def test_a_tiny_image_in_a_folder_is_named(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=10, per_class=3, size=16)
    victim = next(p for p in sorted(root.iterdir()))
    Image.new("RGB", (1, 1), RED).save(victim / "zz_pixel.png")
    with pytest.raises(ValueError, match=rf"image {victim / 'zz_pixel.png'} is 1x1 pixels"):
        from_folder(root, image_size=16, progress=False)


def test_a_class_in_both_train_and_val_is_refused_naming_it(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=8, per_class=3, size=16, split_folders=True)
    name = sorted(p.name for p in (root / "val").iterdir())[0]
    write_image_folder(tmp_path / "other", classes=1, per_class=3, size=16, seed=9)
    shutil.copytree(next((tmp_path / "other").iterdir()), root / "train" / name)  # other images, the same name
    with pytest.raises(ValueError, match=rf"class '{name}' appears in both .*train/{name}/ and .*val/{name}/.*novel "
                                         "classes must stay novel"):
        from_folder(root, image_size=16, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# classes too small for the episode shape


def uneven_folder(root: Path) -> Path:
    """train/ 8, val/ 4, test/ 4 classes of 6 images; the first class of each split loses one (5 left), as the
    emoji set's classes have 5 or 6."""
    write_image_folder(root, classes=16, per_class=6, size=16, split_folders=True)
    for split in ("train", "val", "test"):
        sorted(sorted((root / split).iterdir())[0].iterdir())[-1].unlink()
    return root


def test_min_images_leaves_out_small_classes_and_lists_them(tmp_path: Path) -> None:
    root = uneven_folder(tmp_path / "uneven")
    everything = from_folder(root, image_size=16, progress=False)
    assert everything.dropped_classes is None and "min_images" not in everything.options
    kept = from_folder(root, image_size=16, progress=False, min_images=6)
    assert kept.options["min_images"] == 6
    assert kept.dropped_classes["min_images"] == 6
    for name in ("train", "val", "test"):
        before, after = everything.get(name), kept.get(name)
        small = {c: int(n) for c, n in zip(before.class_names, before.class_counts()) if n < 6}
        assert kept.dropped_classes["classes"][name] == small  # name -> image count
        # the split of a class never depends on the threshold: the same classes, fewer of them
        assert after.class_names == [c for c in before.class_names if c not in small]
        assert (after.class_counts() == 6).all()
    assert [len(kept.dropped_classes["classes"][name]) for name in ("train", "val", "test")] == [1, 1, 1]
    assert kept.trainval.class_names == kept.train.class_names + kept.val.class_names
    assert "dropped, fewer than 6 images:" in kept.describe()
    registered = load_splits("folder", root=root, image_size=16, min_images=6)  # --dataset-arg min_images=6
    assert registered.class_lists() == kept.class_lists()


def test_bad_min_images_are_refused(tmp_path: Path) -> None:
    root = uneven_folder(tmp_path / "uneven")
    for bad in (1, 0, "6", True):
        with pytest.raises(ValueError, match="min_images must be a whole number of at least 2"):
            from_folder(root, image_size=16, progress=False, min_images=bad)
    with pytest.raises(ValueError, match=r"min_images=7 leaves the folder train split 0 class\(es\)"):
        from_folder(root, image_size=16, progress=False, min_images=7)
