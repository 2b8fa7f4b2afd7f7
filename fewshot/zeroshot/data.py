"""Zero-shot data: class attributes, per-image features and the seen / unseen split they are evaluated on.

`ZeroShotData` is the one in-memory form every method and evaluator reads. It comes from

- the GBU files of Xian et al. ("Zero-Shot Learning: The Good, the Bad and the Ugly", proposed splits):
  `att_splits.mat` (class attributes, class names, 1-based image indices of the splits) and `res101.mat`
  (ResNet-101 features `features` [2048, N], 1-based `labels` [N, 1]), read by :func:`load_gbu`;
- any arrays (features or backbone embeddings, labels, class attributes), by :meth:`ZeroShotData.from_arrays`.

Indices and labels are 0-based in memory; the 1-based MATLAB convention is converted (and checked) on reading.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from fewshot.files import atomic_write
from fewshot.data.storage import describe_data_root, resolve_data_root

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


@dataclass(frozen=True)
class ZeroShotData:
    """Features, labels and class attributes with a seen / unseen class split (everything 0-based).

    Attributes:
        features: float32 [N, D], one row per image (ResNet-101 features, or a backbone's embeddings).
        labels: int64 [N], class id per image in 0..C-1.
        attributes: float64 [C, A], one attribute vector (or any class descriptor) per class.
        class_names: C names.
        seen_classes, unseen_classes: sorted disjoint class ids.
        trainval: image indices to train on (seen classes only).
        test_seen, test_unseen: image indices of the test images of seen and of unseen classes.
        folds: validation folds, (train class ids, validation class ids) partitions of the seen classes,
            for choosing the calibration and fusion weight (GBU: trainclassesK.txt / valclassesK.txt).
        name: a label for reports.
    """

    features: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray
    class_names: list[str]
    seen_classes: np.ndarray
    unseen_classes: np.ndarray
    trainval: np.ndarray
    test_seen: np.ndarray
    test_unseen: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    name: str = "arrays"

    def __post_init__(self) -> None:
        features = check_features(self.features)
        labels = check_labels(self.labels, len(features), "labels")
        attributes = check_attributes(self.attributes)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "class_names", [str(name) for name in self.class_names])
        if len(self.class_names) != len(attributes):
            raise ValueError(f"class_names has {len(self.class_names)} names but attributes has {len(attributes)} "
                             "classes (rows); expected one name per attribute row")
        if labels.max() >= len(attributes):
            missing = np.unique(labels[labels >= len(attributes)])
            raise ValueError(f"labels include classes {missing[:10].tolist()} without attributes: attributes has "
                             f"{len(attributes)} classes (ids 0..{len(attributes) - 1})")
        for key in ("seen_classes", "unseen_classes"):
            object.__setattr__(self, key, _class_ids(getattr(self, key), len(attributes), key))
        both = np.intersect1d(self.seen_classes, self.unseen_classes)
        if both.size:
            raise ValueError(f"classes {self._names(both)} are both seen and unseen; expected disjoint class sets")
        for key in ("trainval", "test_seen", "test_unseen"):
            object.__setattr__(self, key, _indices(getattr(self, key), len(features), key))
        self._check_split_labels("trainval", self.seen_classes, "seen")
        self._check_split_labels("test_seen", self.seen_classes, "seen")
        self._check_split_labels("test_unseen", self.unseen_classes, "unseen")
        folds = [(_class_ids(train, len(attributes), "fold train classes"),
                  _class_ids(val, len(attributes), "fold validation classes")) for train, val in self.folds]
        for k, (train, val) in enumerate(folds, 1):
            outside = np.setdiff1d(np.concatenate([train, val]), self.seen_classes)
            if outside.size or np.intersect1d(train, val).size:
                raise ValueError(f"validation fold {k} must split the seen classes into disjoint train and validation "
                                 f"classes; it has {self._names(outside)} outside the seen classes or overlaps")
        object.__setattr__(self, "folds", folds)

    def _names(self, ids: np.ndarray, limit: int = 5) -> str:
        shown = [f"{int(i)} ({self.class_names[int(i)]})" for i in ids[:limit]]
        return ", ".join(shown) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")

    def _check_split_labels(self, key: str, allowed: np.ndarray, kind: str) -> None:
        present = np.unique(self.labels[getattr(self, key)])
        stray = np.setdiff1d(present, allowed)
        if stray.size:
            raise ValueError(f"{key} images have labels {self._names(stray)} that are not {kind} classes")

    @property
    def num_classes(self) -> int:
        return len(self.attributes)

    @property
    def attribute_dim(self) -> int:
        return int(self.attributes.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def summary(self) -> dict[str, Any]:
        """Counts for a report."""
        return {"name": self.name, "images": len(self.features), "feature_dim": self.feature_dim,
                "attribute_dim": self.attribute_dim, "seen_classes": len(self.seen_classes),
                "unseen_classes": len(self.unseen_classes), "trainval": len(self.trainval),
                "test_seen": len(self.test_seen), "test_unseen": len(self.test_unseen), "folds": len(self.folds)}

    def with_features(self, features: np.ndarray) -> ZeroShotData:
        """The same split over other features of the same images (e.g. a backbone's embeddings)."""
        return replace(self, features=features)

    @classmethod
    def from_arrays(cls, features: Any, labels: Any, attributes: Any, unseen_classes: Sequence[int], *,
                    class_names: Sequence[str] | None = None, test_fraction: float = 0.2, folds: int = 1,
                    val_fraction: float = 0.25, seed: int = 0, name: str = "arrays") -> ZeroShotData:
        """A zero-shot split of any (features, labels, class attributes): the classes `unseen_classes` are held
        out; of every other class, a seeded `test_fraction` of its images is the seen test set (GZSL) and the
        rest is trained on. `folds` seeded validation folds each hold out `val_fraction` of the seen classes.
        """
        features = check_features(features)
        labels = check_labels(labels, len(features), "labels")
        attributes = check_attributes(attributes)
        unseen = _class_ids(unseen_classes, len(attributes), "unseen_classes")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if labels.max() >= len(attributes):
            missing = np.unique(labels[labels >= len(attributes)])
            raise ValueError(f"labels include classes {missing[:10].tolist()} without attributes: attributes has "
                             f"{len(attributes)} classes (ids 0..{len(attributes) - 1})")
        seen = np.setdiff1d(np.unique(labels), unseen)
        if len(seen) < 2:
            raise ValueError(f"only {len(seen)} seen class(es) have images; training needs at least 2")
        rng = np.random.default_rng(seed)
        trainval, test_seen = [], []
        for c in seen:
            rows = rng.permutation(np.flatnonzero(labels == c))
            cut = int(round(test_fraction * len(rows)))
            test_seen.append(rows[:cut])
            trainval.append(rows[cut:])
        fold_list = []
        for _ in range(folds):
            order = rng.permutation(seen)
            n_val = min(max(1, int(round(val_fraction * len(seen)))), len(seen) - 2)
            fold_list.append((np.sort(order[n_val:]), np.sort(order[:n_val])))
        return cls(features=features, labels=labels, attributes=attributes,
                   class_names=list(class_names) if class_names is not None else [str(c) for c in range(len(attributes))],
                   seen_classes=seen, unseen_classes=unseen, trainval=np.sort(np.concatenate(trainval)),
                   test_seen=np.sort(np.concatenate(test_seen)), test_unseen=np.flatnonzero(np.isin(labels, unseen)),
                   folds=fold_list if len(seen) >= 3 else [], name=name)


# ----------------------------------------------------------------------------------------------
# Checks shared by every way in
# ----------------------------------------------------------------------------------------------


def check_features(features: Any) -> np.ndarray:
    """Float32 [N, D] features, or a ValueError naming what is wrong."""
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"features must be a non-empty 2-D array [images, dims], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"features must be numeric, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"features contain NaN or infinite values (first at image {bad[0]}, dim {bad[1]})")
    return array


def check_labels(labels: Any, count: int, what: str) -> np.ndarray:
    """Int64 [count] labels >= 0, or a ValueError naming the mismatch."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one per image), got shape {array.shape}")
    if len(array) != count:
        raise ValueError(f"{what} has {len(array)} entries but there are {count} feature rows; expected one label "
                         "per image")
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise ValueError(f"{what} must be integer class ids, got dtype {array.dtype} (first {array[:5].tolist()})")
    if array.min() < 0:
        raise ValueError(f"{what} must be class ids >= 0, got {int(array.min())}")
    return array.astype(np.int64)


def check_attributes(attributes: Any) -> np.ndarray:
    """Float64 [C, A] class attributes, finite, or a ValueError naming the first bad class."""
    if hasattr(attributes, "detach"):
        attributes = attributes.detach().cpu().numpy()
    array = np.asarray(attributes)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"attributes must be a non-empty 2-D array [classes, attribute_dim], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"attributes must be numeric, got dtype {array.dtype}")
    array = np.asarray(array, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise ValueError(f"attributes of classes {bad[:10].tolist()} contain NaN or infinite values; every class "
                         "needs a finite attribute vector")
    return array


def _class_ids(values: Any, num_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{what} is empty; expected at least one class id")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integer class ids, got {array[:5].tolist()}")
    out = array.astype(np.int64)
    if out.min() < 0 or out.max() >= num_classes:
        raise ValueError(f"{what} must lie in 0..{num_classes - 1} (one id per attribute row), "
                         f"got {out.min()}..{out.max()}")
    if len(np.unique(out)) != len(out):
        raise ValueError(f"{what} has duplicate class ids")
    return np.sort(out)


def _indices(values: Any, count: int, what: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{what} has no images")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integer image indices, got dtype {array.dtype}")
    out = array.astype(np.int64)
    if out.min() < 0 or out.max() >= count:
        raise ValueError(f"{what} indices must lie in 0..{count - 1} (there are {count} images), "
                         f"got {out.min()}..{out.max()}")
    return out


# ----------------------------------------------------------------------------------------------
# GBU files
# ----------------------------------------------------------------------------------------------


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
