"""Omniglot's `mirrors` dataset option: every training class also mirrored left to right, as a new class
(then rotated like its original), while the validation and test classes stay as the split scheme has them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.data import load_splits


@pytest.fixture(scope="module")
def both(data_root: Path):
    return load_splits("omniglot", "vinyals", data_root), load_splits("omniglot", "vinyals", data_root, mirrors=True)


def test_mirrors_double_the_training_classes_only(both) -> None:
    plain, mirrored = both
    for name in ("train", "trainval"):
        a, b = getattr(plain, name), getattr(mirrored, name)
        assert b.num_classes == 2 * a.num_classes and len(b) == 2 * len(a)
        assert b.class_names[: a.num_classes] == a.class_names
        assert b.class_names[a.num_classes:] == [f"{n}/mirror" for n in a.class_names]
        assert len(set(b.item_ids.tolist())) == len(b)
    for name in ("val", "test"):
        assert np.array_equal(getattr(plain, name).item_ids, getattr(mirrored, name).item_ids)
    assert mirrored.options == {"mirrors": True} and plain.options == {}


def test_a_mirrored_item_is_its_original_flipped_then_rotated(both) -> None:
    plain, mirrored = both
    train, n = mirrored.train, plain.train.num_classes
    for c in range(0, n, max(1, n // 7)):
        original = np.flatnonzero(train.labels == c)
        twin = np.flatnonzero(train.labels == c + n)
        assert len(original) == len(twin) and np.array_equal(train.rotation[original], train.rotation[twin])
        upright = plain.train.images[plain.train.image_index[original]]
        turns = int(train.rotation[original[0]])
        assert torch.equal(train.gather(twin), torch.rot90(upright.flip(-1), turns, dims=(-2, -1)))
        assert torch.equal(train.gather(original), plain.train.gather(original))
        assert not torch.equal(train.gather(twin), train.gather(original))


def test_lake_mirrors_keep_the_held_out_alphabets_out_of_training(data_root: Path) -> None:
    plain = load_splits("omniglot", "lake", data_root)
    mirrored = load_splits("omniglot", "lake", data_root, mirrors=True)
    assert mirrored.train.num_classes == 2 * plain.train.num_classes
    assert mirrored.trainval.num_classes == 2 * plain.trainval.num_classes
    assert mirrored.val.class_names == plain.val.class_names
    held_out = {name.split("/")[0] for name in mirrored.val.class_names}
    assert not held_out & {name.split("/")[0] for name in mirrored.train.class_names}


def test_mirrors_must_be_a_bool(data_root: Path) -> None:
    with pytest.raises(ValueError, match="mirrors must be True or False, got 'yes'"):
        load_splits("omniglot", "vinyals", data_root, mirrors="yes")
