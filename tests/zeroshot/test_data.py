"""Zero-shot data: the GBU loader on the real att_splits.mat files (class counts, split indices, class lists) and
on synthetic folders in the same formats, and the clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from fewshot.zeroshot import (
    GBU_CLASS_COUNTS,
    GBU_DATASETS,
    LinearEncoder,
    MLPEncoder,
    ZeroShotData,
    combine_gbu,
    fit,
    load_attribute_splits,
    load_gbu,
    load_res101,
    write_res101,
)
from fewshot.zeroshot.gbu import GBU_ATTRIBUTE_DIMS, write_attribute_splits
from tests.support.zeroshot_planted import planted_labels, write_synthetic_gbu

IMAGE_COUNTS = {"APY": 15339, "AWA1": 30475, "AWA2": 37322, "CUB": 11788, "SUN": 14340}


@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    """A synthetic GBU folder (all five file kinds) named TOY under tmp_path."""
    return write_synthetic_gbu(tmp_path / "TOY")


# ----------------------------------------------------------------------------------------------
# Real split files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GBU_DATASETS)
def test_real_splits_class_counts_and_indices(gbu_root: Path, name: str):
    splits = load_attribute_splits(gbu_root / "zsl" / "gbu" / name)
    seen_count, unseen_count = GBU_CLASS_COUNTS[name]
    assert splits.attributes.shape == (seen_count + unseen_count, GBU_ATTRIBUTE_DIMS[name])
    assert np.allclose(np.linalg.norm(splits.attributes, axis=1), 1.0)  # "att" is L2-normalised per class
    # 0-based now; the three lists partition the images of res101.mat exactly.
    everything = np.concatenate([splits.trainval, splits.test_seen, splits.test_unseen])
    assert everything.min() == 0 and splits.num_images == IMAGE_COUNTS[name]
    assert len(np.unique(everything)) == len(everything) == IMAGE_COUNTS[name]
    # Planted labels follow the class lists; combine_gbu checks them against trainvalclasses.txt /
    # testclasses.txt and the published counts, and reads the three validation folds.
    labels = planted_labels(splits)
    data = combine_gbu(splits, np.zeros((len(labels), 1), np.float32), labels)
    assert (len(data.seen_classes), len(data.unseen_classes)) == (seen_count, unseen_count)
    assert len(data.folds) == 3
    for train, val in data.folds:
        assert np.array_equal(np.union1d(train, val), data.seen_classes) and not np.intersect1d(train, val).size
    assert set(np.unique(data.labels[data.test_seen])) <= set(data.seen_classes)


def test_real_cub_and_awa2_published_split_sizes(gbu_root: Path):
    for name, sizes in (("CUB", (7057, 1764, 2967)), ("AWA2", (23527, 5882, 7913))):
        splits = load_attribute_splits(gbu_root / "zsl" / "gbu" / name / "att_splits.mat")
        assert (len(splits.trainval), len(splits.test_seen), len(splits.test_unseen)) == sizes
    cub = load_attribute_splits(gbu_root / "zsl" / "gbu" / "CUB")
    assert cub.class_names[0] == "002.Laysan_Albatross"
    names = [line.strip() for line in (gbu_root / "zsl" / "gbu" / "CUB" / "allclasses.txt").read_text().splitlines()]
    assert names == cub.class_names


def test_real_cub_res101_round_trip(gbu_root: Path, tmp_path: Path):
    """A real-format res101.mat (features 2048 x N float32, labels N x 1, 1-based) over the real CUB split."""
    splits = load_attribute_splits(gbu_root / "zsl" / "gbu" / "CUB")
    labels = planted_labels(splits, seed=1)
    features = np.random.default_rng(0).random((len(labels), 2048), dtype=np.float32)
    path = write_res101(tmp_path / "res101.mat", features, labels)
    raw = scipy.io.loadmat(path)
    assert raw["features"].shape == (2048, 11788) and raw["labels"].shape == (11788, 1)
    assert raw["labels"].min() == 1 and raw["labels"].max() == 200
    loaded_features, loaded_labels = load_res101(path)
    assert np.array_equal(loaded_features, features) and np.array_equal(loaded_labels, labels)
    data = load_gbu("CUB", gbu_root, features=path)
    assert data.summary()["seen_classes"] == 150 and data.summary()["unseen_classes"] == 50
    assert data.feature_dim == 2048


def test_missing_res101_says_where_to_put_it(gbu_root: Path):
    with pytest.raises(FileNotFoundError, match=r"res101.mat.*(xlsa17|beside att_splits.mat)"):
        load_gbu("AWA2", gbu_root)


# ----------------------------------------------------------------------------------------------
# Synthetic folders in the same formats (no data needed)
# ----------------------------------------------------------------------------------------------


def test_synthetic_folder_loads_from_each_layout(toy: Path):
    data = load_gbu("TOY", toy.parent)  # <root>/<NAME>/
    assert data.summary()["images"] == 144 and len(data.seen_classes) == 8 and len(data.unseen_classes) == 4
    assert len(data.folds) == 2
    direct = load_gbu("TOY", toy)  # the folder itself
    assert np.array_equal(direct.features, data.features) and np.array_equal(direct.labels, data.labels)
    nested = toy.parent / "root" / "zsl" / "gbu" / "TOY"
    nested.parent.mkdir(parents=True)
    toy.rename(nested)
    assert np.array_equal(load_gbu("TOY", toy.parent / "root").trainval, data.trainval)  # <root>/zsl/gbu/<NAME>/


def test_from_arrays_split(toy: Path):
    features, labels = load_res101(toy / "res101.mat")
    attributes = load_attribute_splits(toy).attributes
    data = ZeroShotData.from_arrays(features, labels, attributes, unseen_classes=[0, 5], test_fraction=0.25, seed=3)
    assert list(data.unseen_classes) == [0, 5] and len(data.seen_classes) == 10
    assert not np.isin(data.labels[data.trainval], [0, 5]).any()
    assert len(np.intersect1d(data.trainval, data.test_seen)) == 0
    again = ZeroShotData.from_arrays(features, labels, attributes, unseen_classes=[0, 5], test_fraction=0.25, seed=3)
    assert np.array_equal(again.test_seen, data.test_seen) and len(data.folds) == 1


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def _rewrite(path: Path, **changes) -> None:
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    for key, value in changes.items():
        if value is None:
            del mat[key]
        else:
            mat[key] = value
    scipy.io.savemat(path, mat)


def test_res101_missing_keys(toy: Path):
    _rewrite(toy / "res101.mat", labels=None)
    with pytest.raises(ValueError, match=r"lacks the keys \['labels'\].*'features'"):
        load_res101(toy / "res101.mat")


def test_res101_zero_based_labels(toy: Path):
    labels = scipy.io.loadmat(toy / "res101.mat")["labels"]
    _rewrite(toy / "res101.mat", labels=labels - 1)
    with pytest.raises(ValueError, match="labels contain 0; res101.mat labels are 1-based"):
        load_res101(toy / "res101.mat")


def test_res101_feature_label_counts_disagree(toy: Path):
    features = scipy.io.loadmat(toy / "res101.mat")["features"]
    _rewrite(toy / "res101.mat", features=features[:, :-3])
    with pytest.raises(ValueError, match=r"features has shape \(32, 141\) but labels has 144 entries"):
        load_res101(toy / "res101.mat")


def test_split_index_zero_based_or_out_of_range(toy: Path):
    loc = scipy.io.loadmat(toy / "att_splits.mat")["test_unseen_loc"]
    _rewrite(toy / "att_splits.mat", test_unseen_loc=loc - loc.min())  # a 0-based list starts at 0
    with pytest.raises(ValueError, match="test_unseen_loc contains index 0; GBU index lists are 1-based"):
        load_attribute_splits(toy)
    _rewrite(toy / "att_splits.mat", test_unseen_loc=np.append(loc, [[500]], axis=0))
    with pytest.raises(ValueError, match=r"test_unseen_loc contains index 500 \(1-based\) but .* has 144 images"):
        load_gbu("TOY", toy)


def test_att_splits_missing_keys_and_nan(toy: Path):
    att = scipy.io.loadmat(toy / "att_splits.mat")["att"]
    bad = att.copy()
    bad[2, 5] = np.nan
    _rewrite(toy / "att_splits.mat", att=bad)
    with pytest.raises(ValueError, match=r"attributes of classes \[5\] contain NaN"):
        load_attribute_splits(toy)
    _rewrite(toy / "att_splits.mat", att=None)
    with pytest.raises(ValueError, match=r"lacks the keys \['att'\]"):
        load_attribute_splits(toy)


def test_classes_without_attributes(toy: Path):
    att = scipy.io.loadmat(toy / "att_splits.mat")["att"]
    splits = load_attribute_splits(toy)
    features, labels = load_res101(toy / "res101.mat")
    with pytest.raises(ValueError, match=r"label 13 \(1-based\) but att_splits.mat describes only 12 classes"):
        combine_gbu(splits, features, np.where(labels == 3, 12, labels))
    with pytest.raises(ValueError, match=r"labels include classes \[12\] without attributes"):
        fit(features, np.where(labels == 3, 12, labels), att.T)
    with pytest.raises(ValueError, match="labels has 143 entries but there are 144 feature rows"):
        fit(features, labels[:-1], att.T)


def test_class_lists_must_agree_with_labels(toy: Path):
    names = (toy / "testclasses.txt").read_text().split()
    (toy / "testclasses.txt").write_text("\n".join(names[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"unseen classes .* disagree with testclasses.txt: not listed \['"):
        load_gbu("TOY", toy)


def test_known_dataset_with_wrong_class_counts(tmp_path: Path):
    folder = write_synthetic_gbu(tmp_path / "AWA2")
    (folder / "trainvalclasses.txt").unlink()  # no lists: only the published counts can catch it
    with pytest.raises(ValueError, match="found 8 seen / 4 unseen classes, but the proposed split has 40 / 10"):
        load_gbu("AWA2", folder)


def test_encoder_attribute_dimension_and_nan():
    encoder = LinearEncoder(attribute_dim=8, embedding_dim=4)
    with pytest.raises(ValueError, match=r"attributes have shape \(3, 7\), but this encoder maps 8-dimensional"):
        encoder(torch.zeros(3, 7))
    attributes = torch.zeros(3, 8)
    attributes[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"classes \(rows\) \[1\] contain NaN"):
        MLPEncoder(8, 4, hidden=16)(attributes)
    assert MLPEncoder(8, 4, hidden=16)(torch.zeros(3, 8)).shape == (3, 4)


def test_array_input_checks():
    features = np.zeros((6, 3), np.float32)
    attributes = np.eye(3)
    with pytest.raises(ValueError, match="features contain NaN or infinite values .*image 2, dim 1"):
        ZeroShotData.from_arrays(np.where(np.arange(18).reshape(6, 3) == 7, np.nan, 0.0), [0, 0, 1, 1, 2, 2],
                                 attributes, [2])
    with pytest.raises(ValueError, match="unseen_classes must lie in 0..2"):
        ZeroShotData.from_arrays(features, [0, 0, 1, 1, 2, 2], attributes, [3])
    with pytest.raises(ValueError, match="labels has 5 entries but there are 6 feature rows"):
        ZeroShotData.from_arrays(features, [0, 0, 1, 1, 2], attributes, [2])
    with pytest.raises(ValueError, match=r"attributes must be a non-empty 2-D array .* got shape \(3,\)"):
        ZeroShotData.from_arrays(features, [0, 0, 1, 1, 2, 2], np.ones(3), [2])


def test_write_attribute_splits_round_trip(tmp_path: Path):
    attributes = np.random.default_rng(0).random((4, 3))
    path = write_attribute_splits(tmp_path / "att_splits.mat", attributes, ["a", "b", "c", "d"], np.array([0, 1]),
                                  np.array([2]), np.array([3, 4]))
    splits = load_attribute_splits(path)
    assert splits.class_names == ["a", "b", "c", "d"] and np.allclose(splits.attributes, attributes)
    assert splits.trainval.tolist() == [0, 1] and splits.test_unseen.tolist() == [3, 4]
    assert scipy.io.loadmat(path)["test_unseen_loc"].ravel().tolist() == [4, 5]  # 1-based on disk
