"""The GBU benchmark files of Xian et al. ("Zero-Shot Learning: The Good, the Bad and the Ugly", proposed splits):
find, read, write and join them into `ZeroShotData`.

- `att_splits.mat`: class attributes (attributes x classes), class names, 1-based image indices of the splits;
- `res101.mat`: ResNet-101 features `features` [2048, N] and 1-based `labels` [N, 1];
- class lists beside them: trainvalclasses.txt / testclasses.txt (seen / unseen), trainclassesK.txt /
  valclassesK.txt (validation folds).

The 1-based MATLAB convention is converted (and checked) on reading and written back on writing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from fewshot.data.storage import describe_data_root, resolve_data_root
from fewshot.files import atomic_write
from fewshot.zeroshot.data import ZeroShotData, check_attributes, check_features, check_labels

GBU_DATASETS = ("APY", "AWA1", "AWA2", "CUB", "SUN")
#: (seen, unseen) classes of the proposed splits, checked on loading.
GBU_CLASS_COUNTS = {"APY": (20, 12), "AWA1": (40, 10), "AWA2": (40, 10), "CUB": (150, 50), "SUN": (645, 72)}
GBU_ATTRIBUTE_DIMS = {"APY": 64, "AWA1": 85, "AWA2": 85, "CUB": 312, "SUN": 102}
#: Where a data root keeps the GBU folders (as in $FEWSHOT_DATA); `<root>/<NAME>` (the xlsa17 layout) works too.
GBU_SUBFOLDER = Path("zsl", "gbu")
ATTRIBUTE_KEYS = ("att", "original_att")
_REQUIRED_SPLIT_KEYS = ("att", "allclasses_names", "trainval_loc", "test_seen_loc", "test_unseen_loc")
_SPLIT_LOCATIONS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")


@dataclass(frozen=True)
class AttributeSplits:
    """The content of one `att_splits.mat`: class attributes and names, and 0-based image indices."""

    name: str
    attributes: np.ndarray  # [classes, attribute_dim] float64 (the file stores attributes x classes)
    class_names: list[str]
    trainval: np.ndarray
    test_seen: np.ndarray
    test_unseen: np.ndarray
    train: np.ndarray | None = None
    val: np.ndarray | None = None
    folder: Path | None = None

    @property
    def num_images(self) -> int:
        """The smallest image count the indices fit in (the highest 1-based index)."""
        return int(max(int(loc.max()) + 1 for loc in (self.trainval, self.test_seen, self.test_unseen)))


def find_gbu_folder(dataset: str, root: str | Path | None = None) -> Path:
    """The folder holding `<dataset>/att_splits.mat`: `root` itself, `<root>/zsl/gbu/<dataset>` or
    `<root>/<dataset>`; the data root defaults to $FEWSHOT_DATA."""
    base = resolve_data_root(root)
    candidates = [base, base / GBU_SUBFOLDER / dataset, base / dataset, base / "data" / dataset]
    for folder in candidates:
        if (folder / "att_splits.mat").is_file():
            return folder
    looked = ", ".join(str(c / "att_splits.mat") for c in candidates)
    raise FileNotFoundError(f"no att_splits.mat for {dataset!r} under the data root {describe_data_root(root)}; "
                            f"looked for {looked}. Get the GBU split files (xlsa17 'proposed splits') and put "
                            f"<NAME>/att_splits.mat under <root>/{GBU_SUBFOLDER}/")


def _mat_strings(value: np.ndarray) -> list[str]:
    """MATLAB cell array of strings (as loadmat returns it) -> list of str."""
    flat = np.asarray(value, dtype=object).reshape(-1)
    names = []
    for item in flat:
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.reshape(-1)[0]
        names.append(str(item.reshape(-1)[0]) if isinstance(item, np.ndarray) and item.size else str(item))
    return [name.strip() for name in names]


def _one_based(value: np.ndarray, key: str, source: Path | str, count: int | None = None) -> np.ndarray:
    """1-based MATLAB indices -> 0-based int64, with errors for 0-based or out-of-range lists."""
    array = np.asarray(value).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{source}: {key} is empty")
    if not np.issubdtype(array.dtype, np.number) or not np.all(array == np.round(array)):
        raise ValueError(f"{source}: {key} must hold integer image indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 1:
        raise ValueError(f"{source}: {key} contains index {array.min()}; GBU index lists are 1-based (MATLAB), "
                         "so 0 or negative values mean a 0-based or corrupt list")
    if count is not None and array.max() > count:
        raise ValueError(f"{source}: {key} contains index {array.max()} but the features have {count} images "
                         f"(1-based indices must lie in 1..{count})")
    return array - 1


def load_attribute_splits(path: str | Path, attributes: str = "att") -> AttributeSplits:
    """Read `att_splits.mat` (the file, or its folder): `attributes` is "att" (L2-normalised, the
    standard) or "original_att"."""
    path = Path(path)
    file = path / "att_splits.mat" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; expected a GBU att_splits.mat")
    if attributes not in ATTRIBUTE_KEYS:
        raise ValueError(f"attributes must be one of {ATTRIBUTE_KEYS}, got {attributes!r}")
    try:
        mat = scipy.io.loadmat(file)
    except Exception as error:  # scipy raises several types on a truncated or foreign file
        raise ValueError(f"{file} is not a readable MATLAB file: {error}") from error
    missing = [key for key in dict.fromkeys((*_REQUIRED_SPLIT_KEYS, attributes)) if key not in mat]
    if missing:
        raise ValueError(f"{file} lacks the keys {missing}; a GBU att_splits.mat holds "
                         f"{', '.join(_REQUIRED_SPLIT_KEYS)} (and original_att, train_loc, val_loc)")
    names = _mat_strings(mat["allclasses_names"])
    matrix = np.asarray(mat[attributes], dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError(f"{file}: {attributes} has shape {matrix.shape}, expected attributes x classes with "
                         f"{len(names)} classes (one column per name in allclasses_names)")
    locations = {key: _one_based(mat[key], key, file) for key in _SPLIT_LOCATIONS if key in mat}
    return AttributeSplits(name=file.parent.name, attributes=check_attributes(matrix.T), class_names=names,
                           trainval=locations["trainval_loc"], test_seen=locations["test_seen_loc"],
                           test_unseen=locations["test_unseen_loc"], train=locations.get("train_loc"),
                           val=locations.get("val_loc"), folder=file.parent)


def load_res101(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a GBU `res101.mat`: features [2048, N] and 1-based labels [N, 1] -> (float32 [N, D], 0-based
    int64 [N]). Features stored [N, D] are accepted too (when N != D)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. The per-image ResNet-101 features of the GBU benchmark are not shipped with "
            "fewshot: download the xlsa17 release (Xian et al.) and put its res101.mat (features 2048 x N, labels "
            f"N x 1) in {path.parent}/, beside att_splits.mat, or pass --features PATH")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises several types on a truncated or foreign file
        raise ValueError(f"{path} is not a readable MATLAB file: {error}") from error
    missing = [key for key in ("features", "labels") if key not in mat]
    if missing:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path} lacks the keys {missing} (it has {present}); a GBU res101.mat holds 'features' "
                         "(2048 x N) and 'labels' (N x 1, 1-based)")
    labels = np.asarray(mat["labels"])
    if labels.ndim != 2 or 1 not in labels.shape:
        raise ValueError(f"{path}: labels has shape {labels.shape}, expected N x 1")
    labels = labels.reshape(-1)
    features = np.asarray(mat["features"])
    if features.ndim != 2:
        raise ValueError(f"{path}: features has shape {features.shape}, expected dims x N (2048 x N)")
    if features.shape[1] == len(labels):
        features = features.T
    elif features.shape[0] != len(labels):
        raise ValueError(f"{path}: features has shape {features.shape} but labels has {len(labels)} entries; "
                         f"expected features dims x {len(labels)} (one column per image)")
    if not np.issubdtype(labels.dtype, np.number) or not np.all(labels == np.round(labels)):
        raise ValueError(f"{path}: labels must be integer class numbers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 1:
        raise ValueError(f"{path}: labels contain {labels.min()}; res101.mat labels are 1-based class numbers "
                         "(1..classes), so 0 means a 0-based file")
    return check_features(features), labels - 1


def write_res101(path: str | Path, features: np.ndarray, labels: np.ndarray) -> Path:
    """Write features [N, D] and 0-based labels [N] as a GBU-format res101.mat (features D x N float32,
    labels N x 1 1-based), atomically."""
    features = check_features(features)
    labels = check_labels(labels, len(features), "labels")
    payload = {"features": features.T, "labels": (labels + 1).reshape(-1, 1).astype(np.float64)}
    return _write_mat(path, payload)


def write_attribute_splits(path: str | Path, attributes: np.ndarray, class_names: Sequence[str],
                           trainval: np.ndarray, test_seen: np.ndarray, test_unseen: np.ndarray,
                           original_attributes: np.ndarray | None = None) -> Path:
    """Write a GBU-format att_splits.mat from [C, A] attributes and 0-based index lists (1-based on disk)."""
    attributes = check_attributes(attributes)
    cells = np.empty((len(class_names), 1), dtype=object)
    for i, name in enumerate(class_names):
        cells[i, 0] = np.array([str(name)])
    payload = {"att": attributes.T, "original_att": (attributes if original_attributes is None
                                                     else check_attributes(original_attributes)).T,
               "allclasses_names": cells}
    for key, loc in (("trainval_loc", trainval), ("test_seen_loc", test_seen), ("test_unseen_loc", test_unseen)):
        payload[key] = (np.asarray(loc, dtype=np.int64) + 1).reshape(-1, 1)
    return _write_mat(path, payload)


def _write_mat(path: str | Path, payload: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, payload, do_compression=False)
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))


def read_class_list(path: str | Path) -> list[str]:
    """Class names, one a line (blank lines and surrounding spaces ignored)."""
    with open(path, encoding="utf-8") as file:
        return [line.strip() for line in file if line.strip()]


def class_ids_from_names(names: Sequence[str], class_names: Sequence[str], source: Path | str) -> np.ndarray:
    """Class ids of `names` in `class_names`, or a ValueError naming the unknown ones."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise ValueError(f"{source} names classes that are not in allclasses_names: {unknown[:5]}")
    return np.array([index[name] for name in names], dtype=np.int64)


def validation_folds(folder: Path, class_names: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The GBU validation folds (trainclassesK.txt, valclassesK.txt), K = 1, 2, ... while both files exist."""
    folds = []
    k = 1
    while (folder / f"trainclasses{k}.txt").is_file() and (folder / f"valclasses{k}.txt").is_file():
        train = class_ids_from_names(read_class_list(folder / f"trainclasses{k}.txt"), class_names,
                                     folder / f"trainclasses{k}.txt")
        val = class_ids_from_names(read_class_list(folder / f"valclasses{k}.txt"), class_names,
                                   folder / f"valclasses{k}.txt")
        folds.append((np.sort(train), np.sort(val)))
        k += 1
    return folds


def split_classes_from_lists(splits: AttributeSplits) -> tuple[np.ndarray, np.ndarray] | None:
    """(seen, unseen) class ids from trainvalclasses.txt / testclasses.txt beside the .mat, if both exist."""
    folder = splits.folder
    if folder is None or not (folder / "trainvalclasses.txt").is_file() or not (folder / "testclasses.txt").is_file():
        return None
    seen = class_ids_from_names(read_class_list(folder / "trainvalclasses.txt"), splits.class_names,
                                folder / "trainvalclasses.txt")
    unseen = class_ids_from_names(read_class_list(folder / "testclasses.txt"), splits.class_names,
                                  folder / "testclasses.txt")
    return np.sort(seen), np.sort(unseen)


def combine_gbu(splits: AttributeSplits, features: np.ndarray, labels: np.ndarray,
                source: str | Path = "res101.mat") -> ZeroShotData:
    """Join an att_splits.mat with its features: check the indices against the image count, derive the seen and
    unseen classes from the labels, and check them against the class lists and published class counts."""
    features = check_features(features)
    labels = check_labels(labels, len(features), f"{source} labels")
    count = len(features)
    for key in ("trainval", "test_seen", "test_unseen", "train", "val"):
        loc = getattr(splits, key)
        if loc is not None and loc.max() >= count:
            raise ValueError(f"{splits.folder or splits.name}: {key}_loc contains index {loc.max() + 1} (1-based) but "
                             f"{source} has {count} images")
    if labels.max() >= len(splits.class_names):
        raise ValueError(f"{source} has label {labels.max() + 1} (1-based) but att_splits.mat describes only "
                         f"{len(splits.class_names)} classes: those classes have no attributes")
    seen = np.unique(labels[splits.trainval])
    unseen = np.unique(labels[splits.test_unseen])
    listed = split_classes_from_lists(splits)
    if listed is not None:
        for kind, found, expected, file in (("seen", seen, listed[0], "trainvalclasses.txt"),
                                            ("unseen", unseen, listed[1], "testclasses.txt")):
            if not np.array_equal(found, expected):
                extra = [splits.class_names[i] for i in np.setdiff1d(found, expected)[:5]]
                lacking = [splits.class_names[i] for i in np.setdiff1d(expected, found)[:5]]
                raise ValueError(f"the {kind} classes of {source} (labels at the split indices) disagree with {file}: "
                                 f"not listed {extra}, listed but without images {lacking}")
    expected_counts = GBU_CLASS_COUNTS.get(splits.name.upper())
    if expected_counts is not None and (len(seen), len(unseen)) != expected_counts:
        raise ValueError(f"{splits.name}: found {len(seen)} seen / {len(unseen)} unseen classes, but the proposed "
                         f"split has {expected_counts[0]} / {expected_counts[1]}")
    folds = validation_folds(splits.folder, splits.class_names) if splits.folder is not None else []
    return ZeroShotData(features=features, labels=labels, attributes=splits.attributes,
                        class_names=splits.class_names, seen_classes=seen, unseen_classes=unseen,
                        trainval=splits.trainval, test_seen=splits.test_seen, test_unseen=splits.test_unseen,
                        folds=folds, name=splits.name)


def load_gbu(dataset: str, root: str | Path | None = None, features: str | Path | None = None,
             attributes: str = "att") -> ZeroShotData:
    """Load a GBU benchmark (APY, AWA1, AWA2, CUB, SUN or any folder in the same format) as `ZeroShotData`.

    `root` is the data root (default $FEWSHOT_DATA) or the dataset's folder itself; `features` is the
    res101.mat to use (default: beside att_splits.mat).
    """
    folder = find_gbu_folder(dataset, root)
    splits = load_attribute_splits(folder, attributes)
    if splits.name.upper() != dataset.upper() and dataset.upper() in GBU_CLASS_COUNTS:
        splits = replace(splits, name=dataset.upper())
    feature_path = Path(features) if features is not None else folder / "res101.mat"
    matrix, labels = load_res101(feature_path)
    return combine_gbu(splits, matrix, labels, feature_path)
