"""Zero-shot data in memory: class attributes, per-image features and the seen / unseen split they are evaluated on.

`ZeroShotData` is the one in-memory form every method and evaluator reads. It comes from the GBU files
(`fewshot.zeroshot.gbu.load_gbu`) or from any arrays (features or backbone embeddings, labels, class attributes),
by :meth:`ZeroShotData.from_arrays`; the checks here guard both ways in. Indices and labels are 0-based.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


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
