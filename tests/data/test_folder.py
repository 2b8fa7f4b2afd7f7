"""The "folder" and "arrays" datasets: layouts, channels, seeded splits, content-keyed cache, clear errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot.data.arrays  # noqa: F401  (registers "arrays")
import fewshot.data.folder as folder_module  # registers "folder"
from fewshot.data.arrays import from_arrays
from fewshot.data.datasets import DATASETS, load_splits, split_classes
from fewshot.data.folder import from_folder
from tests.support.synthetic import image_folder_classes, write_image_folder

SIZE = 16  # stored side: small, so decoding stays fast
NAMES = image_folder_classes(10)[""]  # the class folders of the 10-class trees


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own empty cache folder, so cache files can be counted."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEWSHOT_CACHE", str(cache))
    return cache


def cache_files(cache: Path) -> list[Path]:
    folder = cache / "folder"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated trees, written once; tests that change a tree copy it first."""
    base = tmp_path_factory.mktemp("trees")
    return {
        "rgb": write_image_folder(base / "rgb", classes=10, per_class=4, size=24),
        "gray_jpg": write_image_folder(base / "gray_jpg", classes=10, per_class=4, size=24, mode="L", ext="jpg"),
        "splits": write_image_folder(base / "splits", classes=10, per_class=4, size=24, split_folders=True),
    }


def copy_tree(source: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def load(root: Path, **kwargs):
    kwargs.setdefault("image_size", SIZE)
    return from_folder(root, progress=False, **kwargs)


def all_names(splits) -> list[str]:
    return [name for part in ("train", "val", "test") for name in splits.get(part).class_names]


# ---------------------------------------------------------------------------------------------------------------
# layouts, channels, splits


def test_rgb_folder_detected_and_split(trees):
    splits = load(trees["rgb"])
    names = image_folder_classes(10)[""]
    assert (splits.dataset, splits.scheme, splits.in_channels, splits.image_size) == ("folder", "random", 3, SIZE)
    assert splits.train.images.shape == (40, 3, SIZE, SIZE) and splits.train.images.dtype == torch.uint8
    assert sorted(all_names(splits)) == names  # covers every class
    assert len(set(all_names(splits))) == 10  # disjoint
    expected = split_classes(10, (0.6, 0.2, 0.2), 0)
    for part, ids in zip(("train", "val", "test"), expected):
        split = splits.get(part)
        assert split.class_names == [names[i] for i in ids]
        assert split.class_counts().tolist() == [4] * len(ids)
        for item, label in zip(split.item_ids, split.labels):
            assert item.split("/")[0] == split.class_names[label] and item.endswith(".png")
    assert sorted(splits.trainval.class_names) == sorted(splits.train.class_names + splits.val.class_names)
    assert splits.options == {"root": str(trees["rgb"].resolve()), "channels": 3,
                              "fractions": [0.6, 0.2, 0.2], "split_seed": 0}


def test_split_is_seeded(trees):
    first, again = load(trees["rgb"], split_seed=3), load(trees["rgb"], split_seed=3)
    assert first.class_lists() == again.class_lists()
    others = [load(trees["rgb"], split_seed=seed).class_lists() for seed in (0, 1, 2)]
    assert any(other != first.class_lists() for other in others)
    wide = load(trees["rgb"], fractions=(0.4, 0.3, 0.3), split_seed=5)
    assert [len(wide.get(p).class_names) for p in ("train", "val", "test")] == [4, 3, 3]
    assert wide.options["fractions"] == [0.4, 0.3, 0.3] and wide.options["split_seed"] == 5


def test_grayscale_jpeg_folder(trees):
    splits = load(trees["gray_jpg"])
    assert splits.in_channels == 1 and splits.options["channels"] == 1
    assert splits.train.images.shape == (40, SIZE, SIZE)
    forced = load(trees["gray_jpg"], channels=3)
    assert forced.in_channels == 3 and forced.train.images.shape == (40, 3, SIZE, SIZE)


def test_explicit_split_folders(trees):
    splits = load(trees["splits"])
    expected = image_folder_classes(10, split_folders=True)
    assert splits.scheme == "folders"
    assert splits.class_lists() == expected
    assert splits.options == {"root": str(trees["splits"].resolve()), "channels": 3}
    assert all(item.startswith("val/") for item in splits.val.item_ids)
    assert splits.trainval.class_names == expected["train"] + expected["val"]


def test_registered_loader(trees):
    info = DATASETS["folder"]
    assert info.schemes == ("auto", "random", "folders") and info.default_image_size == 84
    splits = load_splits("folder", root=trees["splits"], image_size=SIZE)
    assert splits.scheme == "folders"  # the resolved scheme is recorded, not "auto"
    assert load_splits("folder", "random", root=trees["rgb"], image_size=SIZE, split_seed=1).options["split_seed"] == 1
    with pytest.raises(ValueError, match="needs --data-root"):
        load_splits("folder", image_size=SIZE)
    with pytest.raises(ValueError, match="'folders', not 'random'"):
        load_splits("folder", "random", root=trees["splits"], image_size=SIZE)
    with pytest.raises(ValueError, match="'folders' scheme needs"):
        load_splits("folder", "folders", root=trees["rgb"], image_size=SIZE)
    with pytest.raises(ValueError, match="fractions and split_seed apply"):
        load_splits("folder", root=trees["splits"], image_size=SIZE, split_seed=4)


def test_preprocess_matches_stored_rows(trees):
    """The API preprocesses a new image with the registered function: it must give the stored pixels."""
    preprocess = DATASETS["folder"].preprocess
    for tree in ("rgb", "gray_jpg"):
        splits = load(trees[tree])
        for index in (0, 7, len(splits.test) - 1):
            path = trees[tree] / splits.test.item_ids[index]
            stored = splits.test.gather(np.array([index]))[0]
            assert torch.equal(preprocess(path, SIZE, splits.in_channels), stored)


def test_default_image_size_and_artifacts(trees, tmp_path):
    root = copy_tree(trees["rgb"], tmp_path)
    (root / ".DS_Store").write_bytes(b"junk")
    (root / NAMES[0] / "._000.png").write_bytes(b"junk")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "notes.txt").write_text("junk")
    (root / NAMES[1]).rename(root / (NAMES[1] + "_upper"))
    Image.open(root / NAMES[2] / "000.png").save(root / NAMES[2] / "extra.PNG")
    splits = from_folder(root, progress=False)
    assert splits.image_size == 84 and splits.train.images.shape[-2:] == (84, 84)
    assert sum(len(splits.get(p)) for p in ("train", "val", "test")) == 41
    assert NAMES[1] + "_upper" in all_names(splits)


# ---------------------------------------------------------------------------------------------------------------
# the cache


def test_cache_reused_by_content(trees, tmp_path, private_cache, monkeypatch):
    root = copy_tree(trees["rgb"], tmp_path)
    first = load(root)
    [cache] = cache_files(private_cache)
    stamp = cache.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("a warm load must not open or decode images")

    with monkeypatch.context() as patch:
        patch.setattr(folder_module, "_decode", no_decoding)
        patch.setattr(folder_module, "_modes", no_decoding)
        second = load(root)
    assert cache_files(private_cache) == [cache] and cache.stat().st_mtime_ns == stamp
    assert torch.equal(first.train.images, second.train.images)
    moved = load(copy_tree(root, tmp_path, "moved"))  # same content elsewhere: same key, same file
    assert [p.name for p in cache_files(private_cache)] == [cache.name]
    assert torch.equal(moved.train.images, first.train.images)
    assert moved.options["root"] != first.options["root"]

    edited = root / NAMES[3] / "001.png"
    pixels = np.array(Image.open(edited))
    pixels[:4, :4] = 0
    Image.fromarray(pixels).save(edited)
    load(root)
    assert len(cache_files(private_cache)) == 2 and cache.stat().st_mtime_ns == stamp
    load(root, image_size=SIZE + 4)
    assert len(cache_files(private_cache)) == 3


def test_damaged_cache_rebuilt(trees, private_cache):
    first = load(trees["rgb"])
    [cache] = cache_files(private_cache)
    cache.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring unreadable"):
        again = load(trees["rgb"])
    assert torch.equal(again.train.images, first.train.images)
    assert cache.stat().st_size > 100


def test_unwritable_cache_warns(trees, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FEWSHOT_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not write image folder cache"):
        splits = load(trees["rgb"])
    assert len(splits.train) == 24


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image_named_and_not_cached(tmp_path, private_cache, ext):
    root = write_image_folder(tmp_path / "tree", classes=6, per_class=3, size=64, ext=ext)
    broken = root / NAMES[4] / f"001.{ext}"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{NAMES[4]}/001.{ext}"):
        load(root, fractions=(0.34, 0.33, 0.33))
    assert not (private_cache / "folder").exists() or not list((private_cache / "folder").iterdir())


def test_not_an_image_named(trees, tmp_path):
    root = copy_tree(trees["rgb"], tmp_path)
    (root / NAMES[5] / "001.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match=f"{NAMES[5]}/001.png"):
        load(root)


# ---------------------------------------------------------------------------------------------------------------
# channels


def test_mixed_modes_need_channels(trees, tmp_path):
    root = copy_tree(trees["rgb"], tmp_path)
    for path in sorted((root / NAMES[0]).iterdir()):
        Image.open(path).convert("L").save(path)
    palette = root / NAMES[1] / "000.png"
    Image.open(palette).convert("P").save(palette)  # palette images count as colour
    with pytest.raises(ValueError, match=rf"4 grayscale .*{NAMES[0]}/000.png \(L\).*36 colour.*channels=3") as error:
        load(root)
    assert "--dataset-arg channels=3" in str(error.value)
    assert load(root, channels=3).train.images.shape[1:] == (3, SIZE, SIZE)
    gray = load(root, channels=1)
    assert gray.in_channels == 1 and gray.train.images.shape[1:] == (SIZE, SIZE)
    with pytest.raises(ValueError, match="channels must be 1"):
        load(root, channels=2)


# ---------------------------------------------------------------------------------------------------------------
# bad trees


def test_bad_roots(tmp_path, trees):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a folder"):
        load(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no class folders"):
        load(tmp_path / "empty")
    with pytest.raises(ValueError, match="one level too high"):
        load(copy_tree(trees["rgb"], tmp_path / "outer", "rgb").parent)  # outer/rgb/<class>/<image>


def test_bad_class_folders(trees, tmp_path):
    root = copy_tree(trees["rgb"], tmp_path)
    (root / "zz_empty").mkdir()
    with pytest.raises(ValueError, match="class folder .*zz_empty holds no images"):
        load(root)
    (root / "zz_empty").rmdir()
    (root / NAMES[6] / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"unexpected file .*{NAMES[6]}/notes.txt"):
        load(root)
    (root / NAMES[6] / "notes.txt").unlink()
    shutil.copy(root / NAMES[7] / "000.png", root / "stray.png")
    with pytest.raises(ValueError, match="stray.png sits directly in"):
        load(root)


def test_too_few_classes(tmp_path):
    two = write_image_folder(tmp_path / "two", classes=2, per_class=2, size=16)
    with pytest.raises(ValueError, match="2 class\\(es\\); a random train / val / test class split needs at least 3"):
        load(two)
    eight = write_image_folder(tmp_path / "eight", classes=8, per_class=2, size=16)
    with pytest.raises(ValueError, match="the test split has 1 class"):
        load(eight)  # 8 classes at 0.6 / 0.2 / 0.2: 5 / 2 / 1
    with pytest.raises(ValueError, match="the val split has 0 class"):
        load(eight, fractions=(0.75, 0.0, 0.25))


def test_bad_split_folders(trees, tmp_path):
    root = copy_tree(trees["splits"], tmp_path)
    shutil.move(str(root / "val"), str(tmp_path / "val_aside"))
    with pytest.raises(ValueError, match=r"train, test/ but not val/"):
        load(root)
    shutil.move(str(tmp_path / "val_aside"), str(root / "val"))
    shutil.copytree(root / "train" / NAMES[0], root / "test" / NAMES[0])
    with pytest.raises(ValueError, match=f"class '{NAMES[0]}' appears in both"):
        load(root)
    shutil.rmtree(root / "test" / NAMES[0])
    shutil.rmtree(root / "val" / sorted(os.listdir(root / "val"))[0])
    with pytest.raises(ValueError, match="the val split has 1 class"):
        load(root)
    (root / "cats").mkdir()
    with pytest.raises(ValueError, match="and also cats/"):
        load(root)


# ---------------------------------------------------------------------------------------------------------------
# arrays


def _arrays(classes: int = 10, per_class: int = 5, shape: tuple[int, ...] = (3, 12, 12), seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(classes * per_class, *shape), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    return images, labels


def test_from_arrays_uint8_and_names():
    images, labels = _arrays()
    splits = from_arrays(images, labels, [f"class{i}" for i in range(10)], split_seed=2)
    assert (splits.dataset, splits.scheme, splits.in_channels, splits.image_size) == ("arrays", "random", 3, 12)
    assert splits.options == {"channels": 3, "fractions": [0.6, 0.2, 0.2], "split_seed": 2}
    assert sorted(all_names(splits)) == [f"class{i}" for i in range(10)]
    for index in range(len(splits.train)):
        row = int(splits.train.item_ids[index])
        assert torch.equal(splits.train.gather(np.array([index]))[0], torch.from_numpy(images[row]))
        assert splits.train.class_names[splits.train.labels[index]] == f"class{labels[row]}"
    again = from_arrays(torch.from_numpy(images), torch.from_numpy(labels), split_seed=2)
    assert again.class_lists() == {k: [n.replace("class", "") for n in v] for k, v in splits.class_lists().items()}


def test_from_arrays_float_channels_last_strings():
    images, labels = _arrays(shape=(10, 10, 3))  # channels-last, numpy style
    floats = images.astype(np.float32) / 255
    names = np.array(["cat", "dog", "eel", "fox", "gnu", "hen", "ant", "bee", "cow", "yak"])[labels]
    splits = from_arrays(floats, list(names))
    assert splits.in_channels == 3 and splits.train.images.shape[1:] == (3, 10, 10)
    row = int(splits.test.item_ids[0])
    assert torch.equal(splits.test.gather(np.array([0]))[0], torch.from_numpy(images[row]).permute(2, 0, 1))
    assert sorted(all_names(splits)) == ["ant", "bee", "cat", "cow", "dog", "eel", "fox", "gnu", "hen", "yak"]
    gray, gray_labels = _arrays(shape=(1, 9, 14))  # grayscale, not square: resized to the shorter side
    resized = from_arrays(gray, gray_labels)
    assert resized.in_channels == 1 and resized.image_size == 9 and resized.train.images.shape[1:] == (9, 9)
    assert from_arrays(gray[:, 0], gray_labels, image_size=20).train.images.shape[1:] == (20, 20)


def test_from_arrays_errors():
    images, labels = _arrays()
    with pytest.raises(ValueError, match="50 rows but labels has 49"):
        from_arrays(images, labels[:-1])
    with pytest.raises(ValueError, match="must have shape"):
        from_arrays(images[:, :2], labels)
    with pytest.raises(ValueError, match="must have shape"):
        from_arrays(images.reshape(30, -1), labels)
    with pytest.raises(ValueError, match=r"found values in \[0, 255\]"):
        from_arrays(images.astype(np.float32), labels)  # 0..255 floats
    with pytest.raises(ValueError, match="NaN"):
        from_arrays(np.full((50, 3, 4, 4), np.nan, dtype=np.float32), labels)
    with pytest.raises(ValueError, match="at least 3"):
        from_arrays(images, labels % 2)
    with pytest.raises(ValueError, match="class_names has 4 names"):
        from_arrays(images, labels, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="arrays data lives in memory"):
        load_splits("arrays", image_size=12)



def test_from_arrays_refuses_an_ambiguous_layout_unless_it_is_given():
    images = np.random.default_rng(0).integers(0, 256, (30, 3, 16, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 3)
    with pytest.raises(ValueError, match=r"images of shape \(30, 3, 16, 3\) could be channels-first \[N,C,H,W\] "
                                         r"\(3 channels of 16x3 px\) or channels-last .*layout='NCHW' or layout='NHWC'"):
        from_arrays(images, labels)
    channels_last = from_arrays(images, labels, layout="NHWC")
    assert channels_last.in_channels == 3 and channels_last.image_size == 3  # 3x16 px, resized to the shorter side
    channels_first = from_arrays(images, labels, layout="NCHW")
    assert channels_first.in_channels == 3 and channels_first.image_size == 3  # 16x3 px
    with pytest.raises(ValueError, match=r"images of shape \(30, 3, 16, 3\) do not fit layout 'NHW'"):
        from_arrays(images, labels, layout="NHW")
    with pytest.raises(ValueError, match="layout must be one of NHW, NCHW, NHWC"):
        from_arrays(images, labels, layout="CHW")
    unambiguous, _ = _arrays()  # [N,3,12,12] is read as before, without a layout
    assert from_arrays(unambiguous, _arrays()[1]).train.images.shape[1:] == (3, 12, 12)


def test_from_arrays_uint16_and_ragged_lists_are_clear():
    images, labels = _arrays()
    as_uint16 = images.astype(np.uint16)  # 16-bit storage of 0..255 values: read as other integer types are
    assert torch.equal(from_arrays(as_uint16, labels).train.images, from_arrays(images, labels).train.images)
    assert torch.equal(from_arrays(torch.from_numpy(as_uint16), labels).train.images,
                       from_arrays(images, labels).train.images)
    with pytest.raises(ValueError, match=r"integer images must lie in 0..255, found uint16 values in 0..65535 "
                                         r"\(16-bit images\? scale them to 0..255 first"):
        from_arrays(as_uint16 * 257, labels)
    ragged = [np.zeros((12, 12), np.uint8)] * 3 + [np.zeros((14, 12), np.uint8)]
    with pytest.raises(ValueError, match=r"image 0 has shape \(12, 12\) and image 3 has shape \(14, 12\); resize"):
        from_arrays(ragged, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="got dtype <U1"):
        from_arrays(np.full((4, 2, 2), "a"), [0, 0, 1, 1])
