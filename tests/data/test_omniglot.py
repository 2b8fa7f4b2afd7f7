"""Omniglot data layer on real data: counts, splits, rotations, cache, zip vs folder sources, bad input."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from fewshot.data import ClassSplit, cache_dir, load_omniglot, preprocess_image, resolve_data_root
from fewshot.files import atomic_write
from fewshot.data import omniglot as omniglot_module

# A small real subset, copied byte for byte from the official zips: 3 background and 2 evaluation characters.
SUBSET = {
    "images_background": ["Greek/character01", "Greek/character02", "Latin/character01"],
    "images_evaluation": ["Kannada/character01", "Kannada/character02"],
}


@pytest.fixture(scope="module")
def subset_members(omniglot_root: Path) -> dict[str, dict[str, bytes]]:
    """{part: {member name inside the zip: PNG bytes}} for SUBSET."""
    members = {}
    for part, characters in SUBSET.items():
        with zipfile.ZipFile(omniglot_root / "omniglot" / f"{part}.zip") as archive:
            wanted = tuple(f"{part}/{character}/" for character in characters)
            names = [n for n in archive.namelist() if n.startswith(wanted) and n.endswith(".png")]
            members[part] = {name: archive.read(name) for name in names}
    return members


def write_root(root: Path, members: dict[str, dict[str, bytes]], as_zip: bool) -> Path:
    """Lay `members` out under root/omniglot/ in the official layout, as zips or extracted folders."""
    folder = root / "omniglot"
    folder.mkdir(parents=True)
    for part, files in members.items():
        if as_zip:
            with zipfile.ZipFile(folder / f"{part}.zip", "w") as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
        else:
            for name, data in files.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
    return root


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cold, private cache dir for tests that must build from scratch."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- real Omniglot -------------------------------------------------------------------------------------------


def test_counts(omniglot_store) -> None:
    store = omniglot_store
    assert store.images.shape == (32460, 28, 28) and store.images.dtype == torch.uint8
    assert len(store.characters) == 1623 and len(set(store.characters)) == 1623
    assert store.background.sum() == 964 and (~store.background).sum() == 659
    assert len(store.alphabets) == 50
    assert np.array_equal(np.bincount(store.character_of), np.full(1623, 20))
    assert sorted(set(store.drawer.tolist())) == list(range(1, 21))
    assert len(store.image_ids) == 32460 and store.image_ids[0].count("_") == 1


def test_vinyals_class_counts(omniglot_store) -> None:
    for name, classes in {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}.items():
        split = omniglot_store.split(name)
        assert split.num_classes == classes and len(split) == 20 * classes
        assert np.array_equal(np.bincount(split.labels), np.full(classes, 20))
        assert len(set(split.item_ids.tolist())) == len(split)
    train, val, test = (set(omniglot_store.split(n).class_names) for n in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)


def test_rotated_class_is_rot90_of_unrotated(omniglot_store) -> None:
    split = omniglot_store.split("train")
    base = split.class_names.index("Greek/character05/rot000")
    upright = split.gather(np.flatnonzero(split.labels == base))
    for k, degrees in ((1, "090"), (2, "180"), (3, "270")):
        label = split.class_names.index(f"Greek/character05/rot{degrees}")
        rotated = split.gather(np.flatnonzero(split.labels == label))
        assert torch.equal(rotated, torch.rot90(upright, k, dims=(-2, -1)))
        assert not torch.equal(rotated, upright)


def test_getitem_is_float_view_of_gather(omniglot_store) -> None:
    split = omniglot_store.split("val")
    index = np.array([0, 21, 4000, len(split) - 1])
    gathered = split.gather(index)
    for row, i in enumerate(index):
        image, label = split[int(i)]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        assert label == split.labels[i] and isinstance(label, int)
        assert torch.equal(image[0], gathered[row].float() / 255)
    assert split.to_float(gathered).shape == (4, 1, 28, 28)


def test_lake_splits_and_rotations(omniglot_store) -> None:
    background = omniglot_store.split("background")
    evaluation = omniglot_store.split("evaluation")
    assert (background.num_classes, evaluation.num_classes) == (964, 659)
    assert set(background.rotation.tolist()) == {0} and background.class_names[0].endswith("/rot000")
    rotated = omniglot_store.split("evaluation", rotations=(0, 90, 180, 270))
    assert rotated.num_classes == 4 * 659 and len(rotated) == 4 * 13180
    upright_only = omniglot_store.split("train", rotations=(0,))
    assert upright_only.num_classes == 1028


def test_bad_split_arguments(omniglot_store) -> None:
    listing = "train, val, test, trainval, background, evaluation"
    with pytest.raises(ValueError, match=f"unknown Omniglot split 'tarin'; expected one of {listing}"):
        omniglot_store.split("tarin")
    with pytest.raises(ValueError, match=r"rotations must be .* got \[45\]"):
        omniglot_store.split("background", rotations=(45,))


def test_cache_rows_are_preprocess_image(omniglot_store, omniglot_root: Path) -> None:
    """The cached tensor is exactly preprocess_image of each PNG; and that is torchvision's Resize, inverted."""
    store = omniglot_store
    rows = np.random.default_rng(0).choice(len(store.images), size=40, replace=False)
    to_tensor = transforms.Compose([transforms.Resize(28), transforms.ToTensor()])
    parts = ("images_background", "images_evaluation")
    archives = {part: zipfile.ZipFile(omniglot_root / "omniglot" / f"{part}.zip") for part in parts}
    for row in rows:
        character = store.characters[store.character_of[row]]
        part = "images_background" if store.background[store.character_of[row]] else "images_evaluation"
        data = archives[part].read(f"{part}/{character}/{store.image_ids[row]}.png")
        expected = preprocess_image(Image.open(io.BytesIO(data)))
        assert torch.equal(store.images[row], expected)
        peer = to_tensor(Image.open(io.BytesIO(data)).convert("L"))[0]
        assert torch.equal(expected, 255 - (peer * 255).round().to(torch.uint8))
    # Ink is 255 on a zero background: the border is almost empty, the strokes are bright.
    assert store.images[:, 0, :].float().mean() < 5 and store.images.amax() == 255


def test_warm_load_comes_from_the_cache_and_equals_the_session_store(omniglot_store, omniglot_root: Path) -> None:
    # Its speed is a benchmark figure (benchmarks/omniglot_load.py, docs/data.md), not a timed assertion.
    warm = load_omniglot(omniglot_root, download=False)
    assert warm.from_cache
    assert torch.equal(warm.images, omniglot_store.images)
    assert warm.characters == omniglot_store.characters
    assert np.array_equal(warm.image_ids, omniglot_store.image_ids)
    assert np.array_equal(warm.drawer, omniglot_store.drawer)


# --- sources and cache, on a real subset ---------------------------------------------------------------------


def test_zip_and_folder_sources_identical(subset_members, tmp_path: Path, tmp_cache: Path) -> None:
    zipped = load_omniglot(write_root(tmp_path / "zipped", subset_members, as_zip=True), download=False)
    folders = load_omniglot(write_root(tmp_path / "folders", subset_members, as_zip=False), download=False)
    assert zipped.images.shape == (100, 28, 28)
    assert torch.equal(zipped.images, folders.images)
    assert zipped.characters == folders.characters == [c for part in SUBSET.values() for c in part]
    assert np.array_equal(zipped.image_ids, folders.image_ids) and np.array_equal(zipped.drawer, folders.drawer)
    assert zipped.background.tolist() == folders.background.tolist() == [True] * 3 + [False] * 2


def test_warm_load_equals_cold_build(subset_members, tmp_path: Path, tmp_cache: Path) -> None:
    root = write_root(tmp_path, subset_members, as_zip=True)
    cold = load_omniglot(root, image_size=20, download=False)
    warm = load_omniglot(root, image_size=20, download=False)
    assert not cold.from_cache and warm.from_cache and cold.images.shape == (100, 20, 20)
    assert torch.equal(cold.images, warm.images) and cold.characters == warm.characters
    assert np.array_equal(cold.image_ids, warm.image_ids) and np.array_equal(cold.character_of, warm.character_of)
    assert [p.name for p in (tmp_cache / "omniglot").iterdir()] == [cold.cache_file.name]
    # Touching a source zip changes the key: the next load rebuilds.
    zip_path = root / "omniglot" / "images_evaluation.zip"
    stat = zip_path.stat()
    os.utime(zip_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not load_omniglot(root, image_size=20, download=False).from_cache


# --- bad input ----------------------------------------------------------------------------------------------


def test_corrupt_png_names_member_and_leaves_no_cache(subset_members, tmp_path: Path, tmp_cache: Path) -> None:
    members = {part: dict(files) for part, files in subset_members.items()}
    names = sorted(members["images_evaluation"])
    broken = names[len(names) // 2]
    members["images_evaluation"][broken] = members["images_evaluation"][broken][:40]  # truncated mid-way
    root = write_root(tmp_path, members, as_zip=True)
    with pytest.raises(ValueError, match=f"corrupt image .*images_evaluation.zip:{broken}.*expected a PNG"):
        load_omniglot(root, download=False)
    assert not tmp_cache.exists() or not any(tmp_cache.rglob("*"))


def test_corrupt_zip_names_file(subset_members, tmp_path: Path, tmp_cache: Path) -> None:
    root = write_root(tmp_path, subset_members, as_zip=True)
    (root / "omniglot" / "images_background.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="images_background.zip is not a readable zip archive"):
        load_omniglot(root, download=False)


def test_wrong_layouts_name_path_and_expected_layout(subset_members, tmp_path: Path, tmp_cache: Path) -> None:
    # The official names without their images_background/ or images_evaluation/ prefix.
    flat = {
        part: {name.split("/", 1)[1]: data for name, data in files.items()} for part, files in subset_members.items()
    }
    root = write_root(tmp_path, flat, as_zip=False)  # alphabets directly under omniglot/
    with pytest.raises(ValueError, match=r"looks like an alphabet folder placed directly under .*images_background"):
        load_omniglot(root, download=False)
    with zipfile.ZipFile(root / "omniglot" / "images_background.zip", "w") as archive:
        archive.writestr("Greek/character01/0001_01.png", b"")  # official zips nest under images_background/
    (root / "omniglot" / "images_evaluation").mkdir()
    with pytest.raises(ValueError, match="holds 'Greek/character01/0001_01.png', outside 'images_background/'"):
        load_omniglot(root, download=False)


def test_unexpected_file_in_folder(subset_members, tmp_path: Path, tmp_cache: Path) -> None:
    root = write_root(tmp_path, subset_members, as_zip=False)
    (root / "omniglot" / "images_background" / "Greek" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unexpected file .*Greek/notes.txt; expected images_background/<Alphabet>"):
        load_omniglot(root, download=False)


def test_split_entry_naming_missing_character(subset_members, tmp_path: Path, tmp_cache: Path) -> None:
    root = write_root(tmp_path, subset_members, as_zip=True)
    splits = root / "omniglot" / "splits" / "vinyals"
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("Greek/character01/rot000\nGreek/character02/rot270\n")
    (splits / "val.txt").write_text("Greek/character01/rot000\nGreek/character09/rot090\n")
    (splits / "test.txt").write_text("Greek/character01/rot045\n")
    store = load_omniglot(root, download=False)
    train = store.split("train")
    assert train.class_names == ["Greek/character01/rot000", "Greek/character02/rot270"]
    assert train.rotation.tolist() == [0] * 20 + [3] * 20
    assert store.split("train", rotations=(0, 180)).class_names[-1] == "Greek/character02/rot180"
    missing = r"val.txt:2: entry 'Greek/character09/rot090' names character 'Greek/character09'"
    with pytest.raises(ValueError, match=missing):
        store.split("val")
    with pytest.raises(ValueError, match=r"test.txt:1: malformed entry 'Greek/character01/rot045'"):
        store.split("test")
    with pytest.raises(FileNotFoundError, match=r"Vinyals split list not found: looked for .*trainval.txt"):
        store.split("trainval")


def test_missing_data_says_where_it_looked(tmp_path: Path, tmp_cache: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_omniglot(tmp_path, download=False)
    message = str(error.value)
    for place in ("images_background.zip", "images_background/", "images_evaluation.zip", "images_evaluation/"):
        assert f"{tmp_path / 'omniglot' / place}" in message
    assert "from the root argument" in message and "FEWSHOT_DATA" in message and "--data-root" in message


def test_failed_download_is_one_clear_error(tmp_path: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omniglot_module, "OMNIGLOT_URL", "http://127.0.0.1:9/omniglot")  # nothing listens there
    failure = r"(?s)Looked for.*Downloading http://127.0.0.1:9/omniglot/images_background.zip failed"
    with pytest.raises(FileNotFoundError, match=failure):
        load_omniglot(tmp_path, download=True)
    assert not (tmp_path / "omniglot").exists()  # no partial download left behind, nor the empty folder it made
    assert tmp_path.is_dir()  # the folder given as the root, there before, stays


# --- generic store helpers ----------------------------------------------------------------------------------


def test_roots_and_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("FEWSHOT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root() == tmp_path / "xdg" / "fewshot" / "data"
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    atomic_write(target, lambda file: file.write(b"old"))

    def fail_midway(file) -> None:
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail_midway)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_class_split_rejects_inconsistent_arrays() -> None:
    images = torch.zeros(5, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="labels has 2 entries, expected 3"):
        ClassSplit(images, np.zeros(2), ["a"], ["x", "y", "z"], image_index=np.arange(3), rotation=np.zeros(3))
    with pytest.raises(ValueError, match=r"image_index must lie in \[0, 5\)"):
        ClassSplit(images, np.zeros(2), ["a"], ["x", "y"], image_index=np.array([0, 9]), rotation=np.zeros(2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        ClassSplit(images, np.array([0, 1]), ["a"], ["x", "y"], image_index=np.arange(2), rotation=np.zeros(2))
