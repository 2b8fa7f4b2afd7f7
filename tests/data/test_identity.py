"""What identifies a class and a split on a user's folder: content fingerprints, splits that share no image,
and a recorded split read back against the folder as it is now (issue 25, items 1 to 3)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fewshot.data import from_folder
from fewshot.data.identity import apply_split_record, class_fingerprint, split_record
from tests.support.synthetic import write_image_folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEWSHOT_CACHE", str(cache))
    return cache


def add_class(root: Path, name: str, scratch: Path) -> None:
    """A new class folder `root/name` of images unlike any other (another seed)."""
    extra = write_image_folder(scratch / f"extra-{name}", classes=1, per_class=3, size=16, seed=7)
    (extra / os.listdir(extra)[0]).rename(root / name)


def load(root: Path, **kwargs):
    return from_folder(root, image_size=16, progress=False, **kwargs)


def test_a_class_is_identified_by_its_content(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=10, per_class=3, size=16)
    before = load(root).fingerprints
    name = sorted(before)[0]
    (root / name).rename(root / "renamed")
    after = load(root).fingerprints
    assert after["renamed"] == before[name]  # a renamed class keeps its fingerprint
    assert len(set(before.values())) == len(before)  # distinct classes, distinct fingerprints
    Image.new("RGB", (16, 16), "white").save(root / "renamed" / "000.png")
    assert load(root).fingerprints["renamed"] != before[name]  # an edited image changes it
    assert class_fingerprint(["b", "a"]) == class_fingerprint(["a", "b"])  # file order plays no part


def test_a_test_class_copied_from_a_training_class_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=8, per_class=3, size=16, split_folders=True)
    load(root)
    train_class = sorted(os.listdir(root / "train"))[0]
    shutil.copytree(root / "train" / train_class, root / "test" / "copied")
    with pytest.raises(ValueError, match="same image") as error:
        load(root)
    message = str(error.value)
    assert repr(train_class) in message and "'copied'" in message
    assert f"train/{train_class}/000.png" in message and "test/copied/000.png" in message


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_test_class_linked_to_a_training_class_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=8, per_class=3, size=16, split_folders=True)
    train_class = sorted(os.listdir(root / "train"))[1]
    try:
        (root / "val" / "linked").symlink_to(root / "train" / train_class, target_is_directory=True)
    except OSError:
        pytest.skip("symbolic links are not allowed here")
    with pytest.raises(ValueError, match=f"train class {train_class!r} and the val class 'linked'"):
        load(root)


def test_one_copied_image_in_another_split_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=8, per_class=3, size=16, split_folders=True)
    train_class, test_class = sorted(os.listdir(root / "train"))[0], sorted(os.listdir(root / "test"))[0]
    shutil.copy(root / "train" / train_class / "002.png", root / "test" / test_class / "extra.png")
    with pytest.raises(ValueError, match=f"test/{test_class}/extra.png"):
        load(root)


def test_the_same_name_in_another_case_in_two_split_folders_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=8, per_class=3, size=16, split_folders=True)
    train_class = sorted(os.listdir(root / "train"))[0]
    (root / "test" / "x").mkdir()
    Image.new("RGB", (16, 16), "white").save(root / "test" / "x" / "0.png")
    Image.new("RGB", (16, 16), "black").save(root / "test" / "x" / "1.png")
    (root / "test" / "x").rename(root / "test" / train_class.upper())
    with pytest.raises(ValueError, match="differ only in case"):
        load(root)


def test_duplicates_within_one_split_are_allowed(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=8, per_class=3, size=16, split_folders=True)
    first, second = sorted(os.listdir(root / "train"))[:2]
    shutil.copy(root / "train" / first / "000.png", root / "train" / second / "copy.png")
    assert load(root).train.num_classes == 4


def test_a_recorded_split_read_back_on_a_changed_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=10, per_class=3, size=16)
    splits = load(root)
    record = split_record(splits)
    assert apply_split_record(load(root), record, "splits.json").class_lists() == splits.class_lists()

    # A class folder added: the seeded split of 11 classes is another split; the record is the split.
    add_class(root, "zz_new", tmp_path)
    grown = load(root)
    assert grown.class_lists() != splits.class_lists()
    with pytest.raises(ValueError, match="appeared in the data: 'zz_new'.*new_classes=ignore"):
        apply_split_record(grown, record, "splits.json")
    with pytest.warns(UserWarning, match="left out 1 class"):
        kept = apply_split_record(load(root, new_classes="ignore"), record, "splits.json")
    assert kept.class_lists() == splits.class_lists()
    assert kept.trainval.num_classes == splits.trainval.num_classes
    assert list(kept.test.item_ids) == list(splits.test.item_ids)
    shutil.rmtree(root / "zz_new")

    # A class folder renamed (found by its content), one removed, one edited: each named.
    renamed = splits.train.class_names[0]
    (root / renamed).rename(root / "a_renamed")
    with pytest.raises(ValueError, match=f"no longer in the data: {renamed!r}.*now named 'a_renamed'"):
        apply_split_record(load(root, new_classes="ignore"), record, "splits.json")
    (root / "a_renamed").rename(root / renamed)
    edited = splits.val.class_names[0]
    Image.new("RGB", (16, 16), "white").save(root / edited / "001.png")
    with pytest.raises(ValueError, match=f"changed content.*{edited!r}"):
        apply_split_record(load(root), record, "splits.json")


def test_the_new_classes_option_is_checked(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree", classes=10, per_class=3, size=16)
    with pytest.raises(ValueError, match="new_classes must be one of refuse, ignore, got 'keep'"):
        load(root, new_classes="keep")
    assert "new_classes" not in load(root).options  # the options of runs that do not ask for it stay the same
