"""The synthetic datasets of tests/synthetic.py: read by the real loaders, deterministic, and learnable."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import to_tensor

from episodes import EpisodeSampler
from fewshot.data.miniimagenet import load_miniimagenet
from fewshot.data.omniglot import load_omniglot
from tests.support.synthetic import (
    alphabet_names,
    image_folder_classes,
    miniimagenet_wnids,
    omniglot_split_alphabets,
    write_image_folder,
    write_miniimagenet,
    write_omniglot,
)


@pytest.fixture(autouse=True)
def private_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real data, and a private cache so that nothing is written to the user's home."""
    monkeypatch.delenv("FEWSHOT_DATA", raising=False)
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_omniglot(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_miniimagenet(tmp_path_factory.mktemp("mini"))


def all_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def split_arrays(split) -> tuple[torch.Tensor, np.ndarray]:
    """All items of a loaded split (any map-style dataset of (image, label)) as float images [n,...] and labels."""
    items = [split[i] for i in range(len(split))]
    return torch.stack([image for image, _ in items]), np.array([label for _, label in items], dtype=np.int64)


def nearest_mean_accuracy(images: torch.Tensor, labels: np.ndarray, ways: int, shots: int, queries: int = 5,
                          episodes: int = 100, classes: list[int] | None = None) -> float:
    """Mean query accuracy of nearest class mean on raw pixels over `episodes` episodes drawn by `EpisodeSampler`."""
    sampler = EpisodeSampler(labels, ways, shots, queries, classes=classes, seed=0, num_episodes=episodes)
    pixels = images.flatten(1).float()
    correct = []
    for episode in sampler:
        support, query = pixels[episode.support], pixels[episode.query]
        support_labels = torch.from_numpy(episode.support_labels)
        query_labels = torch.from_numpy(episode.query_labels)
        means = torch.stack([support[support_labels == c].mean(0) for c in range(ways)])
        correct.append((torch.cdist(query, means).argmin(1) == query_labels).float().mean().item())
    return float(np.mean(correct))


# ---------------------------------------------------------------------------------------------------------------
# Omniglot


def test_omniglot_loads_with_the_expected_counts(omniglot_root: Path) -> None:
    store = load_omniglot(omniglot_root, image_size=28, download=False)
    assert store.images.shape == (600, 28, 28) and store.images.dtype == torch.uint8
    assert len(store.characters) == 30 and int(store.background.sum()) == 18
    assert np.bincount(store.character_of).tolist() == [20] * 30
    background, evaluation = alphabet_names(3, 2)
    assert store.alphabets == background + evaluation
    expected = {"train": 72, "val": 24, "test": 24, "trainval": 96}
    characters = {}
    for name, classes in expected.items():
        split = store.split(name)
        assert split.num_classes == classes and len(split) == 20 * classes
        assert np.bincount(split.labels).tolist() == [20] * classes
        assert {n.rsplit("/", 1)[1] for n in split.class_names} == {"rot000", "rot090", "rot180", "rot270"}
        characters[name] = {n.rsplit("/", 1)[0] for n in split.class_names}
        alphabets = {n.split("/")[0] for n in characters[name]}
        assert alphabets == set(omniglot_split_alphabets()[name])
    assert not characters["train"] & characters["val"] and not characters["train"] & characters["test"]
    assert not characters["val"] & characters["test"]
    assert characters["trainval"] == characters["train"] | characters["val"]
    # Train mixes both zips' alphabets, as the real Vinyals split does.
    assert {n.split("/")[0] for n in characters["train"]} & set(background)
    assert {n.split("/")[0] for n in characters["train"]} & set(evaluation)
    assert store.split("background").num_classes == 18 and store.split("evaluation").num_classes == 12
    # Ink is 255 on a 0 background after preprocessing: mostly background, some ink in every image.
    ink = store.images.float().mean(dim=(1, 2)) / 255
    assert 0.01 < ink.min() and ink.max() < 0.3


def test_omniglot_zips_have_the_official_layout(omniglot_root: Path) -> None:
    folder = omniglot_root / "omniglot"
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(folder / f"{part}.zip") as archive:
            infos = archive.infolist()
            files = [info for info in infos if not info.is_dir()]
            assert any(info.is_dir() for info in infos)
            assert {info.date_time for info in infos} == {(2015, 12, 10, 12, 0, 0)}
            ids_per_character: dict[str, set[str]] = {}
            for info in files:
                match = re.fullmatch(rf"{part}/[^/]+/(character\d\d)/(\d{{4}})_(\d\d)\.png", info.filename)
                assert match, info.filename
                ids_per_character.setdefault(info.filename.rsplit("/", 1)[0], set()).add(match[2])
            # As in the official zips, the 4-digit id names the character, the 2 digits the drawer.
            assert all(len(ids) == 1 for ids in ids_per_character.values())
            with Image.open(io.BytesIO(archive.read(files[0].filename))) as image:
                assert image.format == "PNG" and image.mode == "1" and image.size == (105, 105)
                white = np.asarray(image).mean()
            assert 0.7 < white < 0.99  # black strokes on white
    lines = (folder / "splits" / "vinyals" / "test.txt").read_text().splitlines()
    assert len(lines) == 24 and all(re.fullmatch(r"[^/]+/character\d\d/rot(000|090|180|270)", line) for line in lines)


def test_omniglot_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(alphabets_background=2, alphabets_evaluation=1, characters_per_alphabet=3, drawers=4)
    first = all_files(write_omniglot(tmp_path / "a", seed=3, **kwargs))
    assert first == all_files(write_omniglot(tmp_path / "b", seed=3, **kwargs))
    other = all_files(write_omniglot(tmp_path / "c", seed=4, **kwargs))
    assert other.keys() == first.keys()
    assert other["omniglot/images_background.zip"] != first["omniglot/images_background.zip"]


def test_omniglot_other_sizes_load(tmp_path: Path) -> None:
    root = write_omniglot(tmp_path, alphabets_background=2, alphabets_evaluation=2, characters_per_alphabet=4,
                          drawers=5, size=64, seed=1)
    store = load_omniglot(root, image_size=20, download=False)
    assert store.images.shape == (80, 20, 20)
    counts = {name: store.split(name).num_classes for name in ("train", "val", "test", "trainval")}
    assert counts == {"train": 32, "val": 16, "test": 16, "trainval": 48}


def test_omniglot_classes_and_rotations_are_distinguishable(omniglot_root: Path) -> None:
    """Nearest class mean on raw 28x28 pixels, 5-way 1-shot, far above chance (0.2); so are the four rotations of
    one character, told apart among themselves (chance 0.25)."""
    store = load_omniglot(omniglot_root, image_size=28, download=False)
    test = store.split("test")
    images, labels = split_arrays(test)
    assert images.shape == (480, 1, 28, 28)
    assert nearest_mean_accuracy(images, labels, ways=5, shots=1) > 0.65
    assert nearest_mean_accuracy(images, labels, ways=5, shots=5) > 0.85
    # The split lists each character's four rotations as consecutive classes.
    assert [name.rsplit("/", 1)[1] for name in test.class_names[:4]] == ["rot000", "rot090", "rot180", "rot270"]
    rotation_accuracy = [
        nearest_mean_accuracy(images, labels, ways=4, shots=1, episodes=20, classes=list(range(4 * c, 4 * c + 4)))
        for c in range(test.num_classes // 4)
    ]
    assert min(rotation_accuracy) > 0.5, rotation_accuracy


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder


@pytest.mark.parametrize("mode, ext", [("RGB", "png"), ("L", "jpg")])
def test_image_folder_reads_with_torchvision(tmp_path: Path, mode: str, ext: str) -> None:
    root = write_image_folder(tmp_path / "flat", classes=8, per_class=12, size=32, mode=mode, ext=ext)
    dataset = ImageFolder(str(root))
    assert dataset.classes == image_folder_classes(8)[""] and len(dataset) == 96
    assert np.bincount(dataset.targets).tolist() == [12] * 8
    assert all(path.endswith(f".{ext}") for path, _ in dataset.samples)
    with Image.open(dataset.samples[0][0]) as image:
        assert image.mode == mode and image.size == (32, 32)


def test_image_folder_split_folders(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, classes=8, per_class=5, split_folders=True)
    assert sorted(path.name for path in root.iterdir()) == ["test", "train", "val"]
    classes = {split: ImageFolder(str(root / split)).classes for split in ("train", "val", "test")}
    assert [len(classes[split]) for split in ("train", "val", "test")] == [4, 2, 2]
    assert len(set(classes["train"]) | set(classes["val"]) | set(classes["test"])) == 8
    assert classes == image_folder_classes(8, split_folders=True)


def test_image_folder_is_deterministic_and_learnable(tmp_path: Path) -> None:
    first = write_image_folder(tmp_path / "a", seed=5)
    assert all_files(first) == all_files(write_image_folder(tmp_path / "b", seed=5))
    assert all_files(first) != all_files(write_image_folder(tmp_path / "c", seed=6))
    dataset = ImageFolder(str(first), transform=to_tensor)
    images, labels = split_arrays(dataset)
    assert images.shape == (96, 3, 32, 32)
    assert nearest_mean_accuracy(images, labels, ways=5, shots=5) > 0.6


# ---------------------------------------------------------------------------------------------------------------
# miniImageNet


def test_miniimagenet_loads_with_the_expected_counts(mini_root: Path) -> None:
    splits = load_miniimagenet(mini_root, download=False)
    wnids = miniimagenet_wnids()
    for name, classes in (("train", 6), ("val", 3), ("test", 3)):
        split = splits[name]
        assert split.images.shape == (20 * classes, 3, 84, 84)
        assert split.class_names == wnids[name]
        assert np.bincount(split.labels).tolist() == [20] * classes
        assert all(re.fullmatch(r"n\d{8}\d{8}\.jpg", item) for item in split.item_ids)
        assert all(item.startswith(split.class_names[label]) for item, label in zip(split.item_ids, split.labels))
        with open(mini_root / "miniimagenet" / "splits" / "ravi" / f"{name}.csv", newline="") as file:
            rows = list(csv.reader(file))
        assert rows[0] == ["filename", "label"] and len(rows) == 1 + 20 * classes
    assert len({w for names in wnids.values() for w in names}) == 12
    with Image.open(mini_root / "miniimagenet" / "images" / splits["val"].item_ids[0]) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (84, 84)
    images, labels = split_arrays(splits["train"])
    assert nearest_mean_accuracy(images, labels, ways=5, shots=5) > 0.6


def test_miniimagenet_is_deterministic(tmp_path: Path, mini_root: Path) -> None:
    assert all_files(write_miniimagenet(tmp_path / "a")) == all_files(mini_root)
    other = all_files(write_miniimagenet(tmp_path / "b", classes_per_split=(2, 1, 1), per_class=3, size=40, seed=1))
    assert len(other) == 4 * 3 + 3
    assert set(other).isdisjoint(k for k in all_files(mini_root) if k.endswith(".jpg"))
