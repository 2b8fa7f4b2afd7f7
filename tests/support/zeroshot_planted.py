"""Test scaffolding: planted zero-shot problems, features generated from class attributes by a known linear map
plus noise.

The per-image GBU features (`res101.mat`) are not available offline, so the tests and the zero-shot benchmark
generate them from the *real* class attributes (in memory, or written as a real-format res101.mat for the command
line):

    feature(image of class c) = M a_c + noise,   M ~ N(0, 1) entries [D, A],   noise ~ N(0, sigma^2 I_D)

`sigma` is the noise per feature dimension relative to the class means' per-dimension root mean square
(about 1 for L2-normalised attributes). Since the noise is isotropic and Gaussian, the nearest true mean
`M a_c` is the Bayes classifier: :func:`oracle_accuracy` is the best accuracy the noise allows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fewshot.zeroshot.data import ZeroShotData, check_attributes
from fewshot.zeroshot.evaluate import per_class_accuracy
from fewshot.zeroshot.gbu import (
    GBU_CLASS_COUNTS,
    AttributeSplits,
    combine_gbu,
    find_gbu_folder,
    load_attribute_splits,
    split_classes_from_lists,
    write_attribute_splits,
    write_res101,
)


def planted_map(feature_dim: int, attribute_dim: int, seed: int = 0) -> np.ndarray:
    """The planted linear map M [feature_dim, attribute_dim] (float32, entries N(0, 1))."""
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal((feature_dim, attribute_dim), dtype=np.float32)


def planted_features(attributes: np.ndarray, labels: np.ndarray, feature_dim: int = 2048, noise: float = 4.0,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, feature_dim] = M a_label + N(0, noise^2) per dimension, and M. Deterministic in `seed`."""
    attributes = check_attributes(attributes).astype(np.float32)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    mapping = planted_map(feature_dim, attributes.shape[1], seed)
    means = attributes @ mapping.T  # [C, D]
    rng = np.random.default_rng([seed, 2])
    features = means[np.asarray(labels, dtype=np.int64)]
    features += np.float32(noise) * rng.standard_normal(features.shape, dtype=np.float32)
    return features, mapping


def planted_labels(splits: AttributeSplits, seen: np.ndarray | None = None, unseen: np.ndarray | None = None,
                   seed: int = 0) -> np.ndarray:
    """A label per image consistent with a real split: trainval and test_seen images get seen classes,
    test_unseen images unseen classes, spread evenly and shuffled (seeded). Seen / unseen default to the
    class lists beside the .mat (trainvalclasses.txt, testclasses.txt)."""
    if seen is None or unseen is None:
        listed = split_classes_from_lists(splits)
        if listed is None:
            raise ValueError(f"{splits.folder}: planting labels needs the seen and unseen classes; pass them or put "
                             "trainvalclasses.txt and testclasses.txt beside att_splits.mat")
        seen, unseen = listed
    rng = np.random.default_rng([seed, 3])
    labels = np.full(splits.num_images, -1, dtype=np.int64)
    for loc, classes in ((splits.trainval, seen), (splits.test_seen, seen), (splits.test_unseen, unseen)):
        labels[loc] = np.asarray(classes)[rng.permutation(np.arange(len(loc)) % len(classes))]
    # Images in no split list still need a label in the file; they are never read.
    labels[labels < 0] = np.asarray(seen)[0]
    return labels


def write_planted_res101(splits: AttributeSplits, path: str | Path | None = None, feature_dim: int = 2048,
                         noise: float = 4.0, seed: int = 0) -> Path:
    """Write a real-format res101.mat planted on a real att_splits.mat (default: beside it)."""
    labels = planted_labels(splits, seed=seed)
    features, _ = planted_features(splits.attributes, labels, feature_dim, noise, seed)
    target = Path(path) if path is not None else Path(splits.folder) / "res101.mat"
    return write_res101(target, features, labels)


def oracle_accuracy(data: ZeroShotData, mapping: np.ndarray, generalized: bool = False) -> float:
    """Per-class-averaged top-1 of the Bayes classifier (nearest true class mean M a_c) on the unseen test
    images, among the unseen classes (ZSL) or all seen and unseen classes (`generalized`)."""
    candidates = np.concatenate([data.seen_classes, data.unseen_classes]) if generalized else data.unseen_classes
    means = data.attributes[candidates].astype(np.float32) @ mapping.T
    features = data.features[data.test_unseen]
    distances = (features ** 2).sum(1, keepdims=True) - 2 * features @ means.T + (means ** 2).sum(1)[None]
    return per_class_accuracy(candidates[distances.argmin(1)], data.labels[data.test_unseen])


def planted_problem(num_classes: int = 60, num_unseen: int = 15, attribute_dim: int = 40, feature_dim: int = 128,
                    images_per_class: int = 40, noise: float = 2.0, seed: int = 0) -> tuple[ZeroShotData, np.ndarray]:
    """A fully synthetic planted problem (random binary-ish attributes, L2-normalised), no files needed.
    Returns the data and the planted map."""
    rng = np.random.default_rng([seed, 4])
    attributes = (rng.random((num_classes, attribute_dim)) < 0.3).astype(np.float64)
    attributes += 0.05 * rng.random((num_classes, attribute_dim))  # no all-zero class
    attributes /= np.linalg.norm(attributes, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_classes), images_per_class)
    features, mapping = planted_features(attributes, labels, feature_dim, noise, seed)
    unseen = np.sort(rng.choice(num_classes, num_unseen, replace=False))
    data = ZeroShotData.from_arrays(features, labels, attributes, unseen, seed=seed, folds=1, name="planted")
    return data, mapping


def load_planted_gbu(dataset: str, root: str | Path | None = None, noise: float = 4.0, feature_dim: int = 2048,
                     seed: int = 0, attributes: str = "att") -> tuple[ZeroShotData, np.ndarray]:
    """A real GBU split (att_splits.mat and class lists) with planted features in place of res101.mat, in
    memory: the same checks as `load_gbu`. Returns the data and the planted map (for `oracle_accuracy`)."""
    splits = load_attribute_splits(find_gbu_folder(dataset, root), attributes)
    if dataset.upper() in GBU_CLASS_COUNTS:
        splits = replace(splits, name=dataset.upper())
    labels = planted_labels(splits, seed=seed)
    features, mapping = planted_features(splits.attributes, labels, feature_dim, noise, seed)
    return combine_gbu(splits, features, labels, f"planted features (noise {noise:g})"), mapping


def write_synthetic_gbu(folder: str | Path, num_classes: int = 12, num_unseen: int = 4, attribute_dim: int = 8,
                        feature_dim: int = 32, images_per_class: int = 12, test_fraction: float = 0.25,
                        noise: float = 1.0, folds: int = 2, seed: int = 0) -> Path:
    """A complete GBU-format folder (att_splits.mat, res101.mat, trainvalclasses.txt, testclasses.txt,
    trainclassesK.txt / valclassesK.txt) of a fully synthetic planted problem, for checks without any data."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 5])
    attributes = (rng.random((num_classes, attribute_dim)) < 0.4) + 0.05 * rng.random((num_classes, attribute_dim))
    attributes /= np.linalg.norm(attributes, axis=1, keepdims=True)
    names = [f"{c + 1:03d}.class_{c}" for c in range(num_classes)]
    unseen = np.sort(rng.choice(num_classes, num_unseen, replace=False))
    seen = np.setdiff1d(np.arange(num_classes), unseen)
    labels = rng.permutation(np.repeat(np.arange(num_classes), images_per_class))
    trainval, test_seen = [], []
    for c in seen:
        rows = np.flatnonzero(labels == c)
        cut = max(1, int(round(test_fraction * len(rows))))
        test_seen.append(rows[:cut])
        trainval.append(rows[cut:])
    test_unseen = np.flatnonzero(np.isin(labels, unseen))
    write_attribute_splits(folder / "att_splits.mat", attributes, names, np.concatenate(trainval),
                           np.concatenate(test_seen), test_unseen, original_attributes=100 * attributes)
    features, _ = planted_features(attributes, labels, feature_dim, noise, seed)
    write_res101(folder / "res101.mat", features, labels)
    (folder / "trainvalclasses.txt").write_text("".join(f"{names[c]}\n" for c in seen))
    (folder / "testclasses.txt").write_text("".join(f"{names[c]}\n" for c in unseen))
    for k in range(1, folds + 1):
        order = rng.permutation(seen)
        n_val = max(1, len(seen) // 4)
        (folder / f"trainclasses{k}.txt").write_text("".join(f"{names[c]}\n" for c in order[n_val:]))
        (folder / f"valclasses{k}.txt").write_text("".join(f"{names[c]}\n" for c in order[:n_val]))
    return folder
